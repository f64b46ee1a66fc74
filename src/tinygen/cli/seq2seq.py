"""`tinygen train seq2seq`, `tinygen translate` and `tinygen eval seq2seq`: the
encoder-decoder Transformer on number <-> words, dates, or a parallel TSV file."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from tinygen.cli.common import add_dataclass_flags, dataclass_from_args, interrupted
from tinygen.errors import TinygenError
from tinygen.models.seq2seq import Seq2SeqConfig
from tinygen.train.config import TrainConfig

# The recipe measured in docs/benchmarks.md (section seq2seq): the paper's inverse-sqrt
# warm-up and Adam beta2 = 0.98, a fresh batch every step (so no weight decay).
DEFAULT_MODEL = Seq2SeqConfig()  # d_model 128, 4 heads, 3 + 3 layers, pre-LN
DEFAULT_TRAIN = TrainConfig(
    max_iters=1000,
    batch_size=128,
    learning_rate=1e-3,
    lr_schedule="inverse_sqrt",
    warmup_iters=200,
    weight_decay=0.0,
    beta2=0.98,
    eval_interval=250,
    eval_iters=10,
    log_interval=10,
)


def _recipe() -> dict:
    generic = TrainConfig()
    return {
        f.name: getattr(DEFAULT_TRAIN, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(DEFAULT_TRAIN, f.name) != getattr(generic, f.name)
    }


MODEL_FLAGS_EXCLUDED = ("src_vocab_size", "tgt_vocab_size", "share_embeddings")


def register(commands) -> None:
    train = commands.train.add_parser(
        "seq2seq",
        help="train the encoder-decoder Transformer on a translation task",
        description="Train the encoder-decoder Transformer (Vaswani et al. 2017). Built-in "
        "tasks need no download; --data PATH reads source<TAB>target lines.",
        epilog="Training defaults for seq2seq (they replace the generic ones shown above): "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in _recipe().items()),
    )
    train.add_argument("--task", choices=("number-words", "dates"), default="number-words")
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
        "--task-seed", type=int, default=0, help="seed of the held-out sets (kept out of training)"
    )
    train.add_argument("--n-heldout", type=int, default=2000, help="test set size")
    train.add_argument(
        "--eval-examples",
        type=int,
        default=500,
        help="validation pairs decoded (greedy) at each evaluation; 0 = none",
    )
    train.add_argument(
        "--final-beam",
        type=int,
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
    add_dataclass_flags(train, Seq2SeqConfig, exclude=MODEL_FLAGS_EXCLUDED, title="model")
    add_dataclass_flags(train, TrainConfig, title="training")
    train.set_defaults(func=train_seq2seq)

    translate = commands.root.add_parser(
        "translate",
        help="translate text with a trained seq2seq run",
        description="Translate each TEXT (or each line of stdin when none is given).",
    )
    translate.add_argument("texts", nargs="*", metavar="TEXT")
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
    evaluate.add_argument("--limit", type=int, default=None, help="score only the first N")
    evaluate.set_defaults(func=eval_command)


def _add_decode_flags(parser: argparse.ArgumentParser, *, default_beam: int) -> None:
    parser.add_argument(
        "--beam",
        type=int,
        default=default_beam,
        help=f"beam size; 1 = greedy (default {default_beam})",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=0.6,
        help="GNMT alpha for beam search; 0 = raw log-probability (default 0.6, the paper's)",
    )
    parser.add_argument("--checkpoint", choices=("best", "last", "ema"), default="best")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")


def train_seq2seq(args: argparse.Namespace) -> int:
    from tinygen.data.translation import TaskSpec, TranslationData, Vocab
    from tinygen.models.seq2seq import Seq2SeqTransformer
    from tinygen.models.seq2seq_task import Seq2SeqTask, Translator, evaluate_heldout
    from tinygen.train.runs import load_run_config
    from tinygen.train.trainer import Trainer

    train_config = dataclass_from_args(TrainConfig, args, DEFAULT_TRAIN)
    if args.resume:  # the saved task and model, whatever the flags say
        saved = load_run_config(args.out)
        spec = TaskSpec(**saved["task"])
        vocabs = (Vocab.from_dict(saved["source_vocab"]), Vocab.from_dict(saved["target_vocab"]))
        data = TranslationData(spec, vocabs)
        model_config = Seq2SeqConfig(**saved["model"])
    else:
        spec = TaskSpec(
            task="tsv" if args.data else args.task,
            direction=args.direction,
            data=str(Path(args.data).resolve()) if args.data else None,
            tokenizer=args.tokenizer,
            seed=args.task_seed,
            n_heldout=args.n_heldout,
        )
        data = TranslationData(spec)
        model_config = dataclasses.replace(
            dataclass_from_args(Seq2SeqConfig, args, DEFAULT_MODEL),
            src_vocab_size=len(data.src_vocab),
            tgt_vocab_size=len(data.tgt_vocab),
            share_embeddings=data.src_vocab is data.tgt_vocab,
        )
    torch.manual_seed(train_config.seed)
    model = Seq2SeqTransformer(model_config)
    task = Seq2SeqTask(model, data, eval_examples=args.eval_examples)
    trainer = Trainer(
        task,
        train_config,
        args.out,
        run_config=task.run_config(),
        resume=args.resume,
        progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        print(
            f"seq2seq {spec.task} ({spec.direction}) with {model.num_params() / 1e6:.2f}M "
            f"parameters, vocabularies {len(data.src_vocab)} -> {len(data.tgt_vocab)} -> "
            f"{args.out}",
            file=sys.stderr,
        )
    result = trainer.fit()
    if interrupted(result, args.out):
        return 130
    if trainer.dist.is_main:
        translator = Translator.from_run(args.out, "best")
        beams = (1,) if args.final_beam <= 1 else (1, args.final_beam)
        results = evaluate_heldout(translator, data.test_pairs, beams=beams, run_dir=args.out)
        _print_scores(results)
        print(
            f"done: step {result.step}; translate with: tinygen translate --run {args.out} "
            f'"{data.test_pairs[0][0]}"',
            file=sys.stderr,
        )
    return 0


def _load(args: argparse.Namespace):
    from tinygen.models.seq2seq_task import Translator
    from tinygen.train.device import resolve_device

    return Translator.from_run(args.run, args.checkpoint, resolve_device(args.device))


def translate_command(args: argparse.Namespace) -> int:
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
        from tinygen.models.seq2seq_task import save_attention_map

        weights = translator.attention_map(texts[0], outputs[0])
        source = translator.src_vocab.split(texts[0].strip())
        target = (translator.tgt_vocab.split(outputs[0]) + ["<eos>"])[: weights.shape[0]]
        save_attention_map(weights, source, target, args.attention_map)
        print(f"attention map saved to {args.attention_map}", file=sys.stderr)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from tinygen.data.translation import TaskSpec, TranslationData
    from tinygen.models.seq2seq_task import evaluate_heldout
    from tinygen.train.runs import load_run_config

    translator = _load(args)
    saved = load_run_config(args.run)
    data = TranslationData(TaskSpec(**saved["task"]), (translator.src_vocab, translator.tgt_vocab))
    pairs = data.test_pairs[: args.limit] if args.limit else data.test_pairs
    beams = (1,) if args.beam <= 1 else (1, args.beam)
    _print_scores(evaluate_heldout(translator, pairs, beams=beams, alpha=args.length_penalty))
    return 0


def _print_scores(results: dict) -> None:
    for name, scores in results.items():
        print(f"held-out {name:>7}: {scores}")
