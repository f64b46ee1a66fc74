"""`tinygen train seq2seq`, `tinygen translate` and `tinygen eval seq2seq`: the
encoder-decoder Transformer on number <-> words, dates, or a parallel TSV file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    filter_fields,
    non_negative_float,
    non_negative_int,
    positive_int,
    train_config_from_args,
)
from tinygen.errors import TinygenError
from tinygen.models.seq2seq import Seq2SeqConfig
from tinygen.recipes.seq2seq import PRESETS
from tinygen.train.config import TrainConfig

DEFAULT = PRESETS["default"]


MODEL_FLAGS_EXCLUDED = ("src_vocab_size", "tgt_vocab_size", "share_embeddings")


def register(commands) -> None:
    train = commands.train.add_parser(
        "seq2seq",
        help="train the encoder-decoder Transformer on a translation task",
        description="Train the encoder-decoder Transformer (Vaswani et al. 2017). Built-in "
        "tasks need no download; --data PATH reads source<TAB>target lines. The defaults "
        "shown are the seq2seq recipe's (docs/benchmarks.md).",
    )
    train.add_argument(
        "--task",
        choices=("number-words", "dates"),
        default="number-words",
        help="built-in task: numbers <-> English words, or dates in two formats",
    )
    train.add_argument(
        "--direction",
        choices=("to-words", "to-digits"),
        default="to-words",
        help="to-words: 4051207 -> four million ...; to-digits: the reverse",
    )
    train.add_argument(
        "--data", default=None, help="a UTF-8 file of source<TAB>target lines (replaces --task)"
    )
    train.add_argument(
        "--tokenizer",
        choices=("auto", "char", "word"),
        default="auto",
        help="auto: words as tokens for number words, characters elsewhere",
    )
    train.add_argument(
        "--task-seed",
        type=non_negative_int,
        default=0,
        help="seed of the held-out sets (kept out of training)",
    )
    train.add_argument("--n-heldout", type=positive_int, default=2000, help="test set size")
    train.add_argument(
        "--eval-examples",
        type=non_negative_int,
        default=500,
        help="validation pairs decoded (greedy) at each evaluation; 0 = none",
    )
    train.add_argument(
        "--final-beam",
        type=positive_int,
        default=4,
        help="after training, score greedy and this beam on the test set",
    )
    train.add_argument("--out", type=Path, default=Path("runs/seq2seq"), help="run directory")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (its saved task and model config)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    recipe = "the seq2seq recipe's"
    add_dataclass_flags(
        train,
        Seq2SeqConfig,
        exclude=MODEL_FLAGS_EXCLUDED,
        title="model",
        defaults=DEFAULT.model,
        source=recipe,
    )
    add_dataclass_flags(train, TrainConfig, title="training", defaults=DEFAULT.train, source=recipe)
    train.set_defaults(func=train_seq2seq)

    translate = commands.root.add_parser(
        "translate",
        help="translate text with a trained seq2seq run",
        description="Translate each TEXT (or each line of stdin when none is given).",
    )
    translate.add_argument(
        "texts", nargs="*", metavar="TEXT", help="inputs to translate (default: stdin's lines)"
    )
    translate.add_argument("--run", type=Path, required=True, help="run directory")
    _add_decode_flags(translate, default_beam=1)
    translate.add_argument(
        "--attention-map",
        type=Path,
        default=None,
        metavar="PNG",
        help="save the cross-attention of the first input as a heat map",
    )
    translate.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the decoder over the whole prefix every step",
    )
    translate.set_defaults(func=translate_command)

    evaluate = commands.eval.add_parser(
        "seq2seq",
        help="exact match and CER of a seq2seq run on its held-out test set",
        description="Score greedy decoding and beam search on the run's held-out test set.",
    )
    evaluate.add_argument("--run", type=Path, required=True, help="run directory")
    _add_decode_flags(evaluate, default_beam=4)
    evaluate.add_argument(
        "--limit", type=positive_int, default=None, help="score only the first N (default all)"
    )
    evaluate.set_defaults(func=eval_command)


def _add_decode_flags(parser: argparse.ArgumentParser, *, default_beam: int) -> None:
    parser.add_argument(
        "--beam",
        type=positive_int,
        default=default_beam,
        help=f"beam size; 1 = greedy (default {default_beam})",
    )
    parser.add_argument(
        "--length-penalty",
        type=non_negative_float,
        default=0.6,
        help="GNMT alpha for beam search; 0 = raw log-probability (default 0.6, the paper's)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last", "ema"),
        default="best",
        help="weights: best (validation), last, or ema (when trained with --ema-decay)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")


def train_seq2seq(args: argparse.Namespace) -> int:
    """A fresh run builds its task from the flags; a resumed run keeps its saved task and
    vocabularies, and its saved model config is the base the model flags change (the
    trainer refuses a change)."""
    from tinygen.data.translation import TaskSpec, TranslationData
    from tinygen.models.runs import load_resumable_config
    from tinygen.recipes.common import interrupted
    from tinygen.recipes.seq2seq import saved_data, train_seq2seq

    if args.resume:
        saved = load_resumable_config(args.out, "seq2seq")
        data = saved_data(saved)
        base = Seq2SeqConfig(**filter_fields(Seq2SeqConfig, saved["model"]))
    else:
        data = TranslationData(
            TaskSpec(
                task="tsv" if args.data else args.task,
                direction=args.direction,
                data=str(Path(args.data).resolve()) if args.data else None,
                tokenizer=args.tokenizer,
                seed=args.task_seed,
                n_heldout=args.n_heldout,
            )
        )
        base = DEFAULT.model
    result, scores = train_seq2seq(
        dataclass_from_args(Seq2SeqConfig, args, base),
        train_config_from_args(args, DEFAULT.train),
        args.out,
        data,
        resume=args.resume,
        progress=not args.no_progress,
        eval_examples=args.eval_examples,
        final_beam=args.final_beam,
    )
    if interrupted(result, args.out):
        return 130
    if scores:
        _print_scores(scores)
        print(
            f"done: step {result.step}; translate with: tinygen translate --run {args.out} "
            f'"{data.test_pairs[0][0]}"',
            file=sys.stderr,
        )
    return 0


def _load(args: argparse.Namespace):
    from tinygen.recipes.seq2seq import Translator
    from tinygen.train.device import resolve_device

    return Translator.from_run(args.run, args.checkpoint, resolve_device(args.device))


def translate_command(args: argparse.Namespace) -> int:
    from tinygen.io import check_output_file

    if args.attention_map is not None:
        args.attention_map = check_output_file(args.attention_map, "--attention-map")
    translator = _load(args)
    texts = args.texts
    if not texts:
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        if not texts:
            raise TinygenError("no input: give TEXT arguments or lines on stdin")
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise TinygenError(f"input {number} is an empty line; give text to translate")
    outputs = translator.translate(
        texts, beam_size=args.beam, alpha=args.length_penalty, use_cache=not args.no_cache
    )
    for line in outputs:
        print(line)
    if args.attention_map is not None:
        translator.draw_attention(texts[0], outputs[0], args.attention_map)
        print(f"attention map saved to {args.attention_map}", file=sys.stderr)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from tinygen.models.runs import load_run_config
    from tinygen.recipes.seq2seq import evaluate_heldout, saved_data

    translator = _load(args)
    data = saved_data(load_run_config(args.run))
    pairs = data.test_pairs[: args.limit] if args.limit is not None else data.test_pairs
    beams = (1,) if args.beam <= 1 else (1, args.beam)
    _print_scores(evaluate_heldout(translator, pairs, beams=beams, alpha=args.length_penalty))
    return 0


def _print_scores(results: dict) -> None:
    for name, scores in results.items():
        print(f"held-out {name:>7}: {scores}")
