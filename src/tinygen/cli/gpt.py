"""`tinygen train gpt` and `tinygen sample gpt`: the character-level GPT, and sampling
OpenAI's GPT-2 in our GPT (`sample gpt --hf gpt2`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    checked,
    dataclass_from_args,
    finish_training,
    non_negative_float,
    non_negative_int,
    positive_int,
    train_config_from_args,
)
from tinygen.errors import TinygenError
from tinygen.models.gpt import GPTConfig
from tinygen.recipes.gpt import PRESETS
from tinygen.train.config import TrainConfig


def register(commands) -> None:
    train = commands.train.add_parser(
        "gpt",
        help="train a character-level GPT (nanoGPT) on a text corpus",
        description="Train a character-level GPT. Any model or training field is a flag; "
        "the defaults shown are the baby preset's (another --preset brings its own).",
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="baby",
        help="named config (default baby: the nanoGPT CPU config)",
    )
    train.add_argument(
        "--data",
        default=None,
        help="shakespeare | milton | sonnets | tinyshakespeare | PATH to a UTF-8 "
        "text file (default shakespeare, shipped with the package; with --resume, the run's)",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/gpt-PRESET)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    baby = PRESETS["baby"]
    add_dataclass_flags(
        train,
        GPTConfig,
        exclude=("vocab_size",),
        title="model",
        defaults=baby.model,
        source="the baby preset's",
    )
    add_dataclass_flags(
        train, TrainConfig, title="training", defaults=baby.train, source="the baby preset's"
    )
    train.set_defaults(func=train_gpt)

    sample = commands.sample.add_parser(
        "gpt",
        help="generate text from a trained GPT run",
        description="Generate text from a trained GPT run or from GPT-2 (--hf); the text "
        "streams as it is generated.",
    )
    which = sample.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="run directory")
    which.add_argument(
        "--hf",
        metavar="NAME_OR_DIR",
        help="a transformers GPT-2 checkpoint instead of a run: a local directory, or a "
        "Hugging Face Hub name (gpt2, gpt2-xl; downloaded only then)",
    )
    sample.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    sample.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=500,
        help="tokens to generate (characters for our runs)",
    )
    sample.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.8,
        help="divides the logits; 0 = greedy, higher = more random",
    )
    sample.add_argument(
        "--top-k", type=positive_int, default=None, help="sample among the k likeliest only"
    )
    sample.add_argument(
        "--top-p",
        type=checked(float, above=0, max=1),
        default=None,
        help="nucleus sampling: among the likeliest tokens whose probabilities sum to p",
    )
    sample.add_argument("--seed", type=non_negative_int, default=1337, help="seed of the sampling")
    sample.add_argument("--num-samples", type=positive_int, default=1, help="texts to generate")
    sample.add_argument("--no-cache", action="store_true", help="recompute the context every step")
    sample.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="weights of a --run: best (lowest validation loss) or last",
    )
    sample.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a LoRA/QLoRA adapter directory (tinygen finetune gpt --out) for --run or --hf",
    )
    sample.add_argument(
        "--merge", action="store_true", help="merge the adapter into the weights before sampling"
    )
    sample.add_argument("--device", default="auto", help="auto | cpu | cuda")
    sample.set_defaults(func=sample_gpt)


def build_configs(args: argparse.Namespace) -> tuple[GPTConfig, TrainConfig]:
    preset = PRESETS[args.preset]
    return dataclass_from_args(GPTConfig, args, preset.model), train_config_from_args(
        args, preset.train
    )


def train_gpt(args: argparse.Namespace) -> int:
    from tinygen.recipes.gpt import train_gpt as train

    model_config, train_config = build_configs(args)
    out = args.out or Path("runs") / f"gpt-{args.preset}"
    result = train(
        model_config,
        train_config,
        out,
        data=args.data,
        resume=args.resume,
        progress=not args.no_progress,
    )
    return finish_training(result, out, f"sample with: tinygen sample gpt --run {out}")


def sample_gpt(args: argparse.Namespace) -> int:
    from tinygen.recipes.gpt import load_gpt, stream_samples
    from tinygen.train.device import resolve_device

    if args.merge and args.adapter is None:
        raise TinygenError("--merge needs --adapter (the LoRA adapter to merge into --run)")
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
    )
    if args.hf is not None:
        from tinygen.recipes.pretrained_gpt import load_pretrained_gpt, stream_text

        model, tokenizer = load_pretrained_gpt(
            args.hf, resolve_device(args.device), adapter=args.adapter, merge=args.merge
        )
        stream_text(model, tokenizer, args.prompt, **sampling)
        return 0
    model, tokenizer = load_gpt(
        args.run,
        args.checkpoint,
        resolve_device(args.device),
        adapter=args.adapter,
        merge=args.merge,
    )
    stream_samples(model, tokenizer, args.prompt, **sampling)
    return 0
