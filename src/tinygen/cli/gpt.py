"""`tinygen train gpt` and `tinygen sample gpt`: the character-level GPT."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from tinygen.cli.common import add_dataclass_flags, dataclass_from_args, interrupted
from tinygen.errors import TinygenError
from tinygen.models.gpt import GPT, GPTConfig
from tinygen.train.config import TrainConfig

# nanoGPT's two Shakespeare configs (config/train_shakespeare_char.py and its CPU override;
# nanoGPT's train.py trains without biases). `baby` keeps nanoGPT's model, batch and
# schedule but peaks at lr 3e-3 instead of 1e-3: at the same 2,000 steps that takes
# tinyshakespeare's validation loss from 1.906 to 1.78 (docs/benchmarks.md; nanoGPT's own
# recipe is `--learning-rate 1e-3 --min-lr 1e-4`).
PRESETS: dict[str, tuple[GPTConfig, TrainConfig]] = {
    "baby": (
        GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
        TrainConfig(
            max_iters=2000,
            batch_size=12,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_iters=100,
            lr_decay_iters=2000,
            beta2=0.99,
            eval_interval=250,
            eval_iters=20,
            log_interval=10,
        ),
    ),
    "shakespeare-char": (
        GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
        TrainConfig(
            max_iters=5000,
            batch_size=64,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_iters=100,
            lr_decay_iters=5000,
            beta2=0.99,
            eval_interval=250,
            eval_iters=200,
            log_interval=10,
        ),
    ),
}


def register(commands) -> None:
    train = commands.train.add_parser(
        "gpt",
        help="train a character-level GPT (nanoGPT) on a text corpus",
        description="Train a character-level GPT. Any model or training field is a flag.",
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="baby",
        help="named config (default baby: the nanoGPT CPU config)",
    )
    train.add_argument(
        "--data",
        default="shakespeare",
        help="shakespeare | milton | sonnets | tinyshakespeare | PATH to a UTF-8 "
        "text file (default shakespeare, shipped with the package)",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/gpt-PRESET)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_flags(train, GPTConfig, exclude=("vocab_size",), title="model")
    add_dataclass_flags(train, TrainConfig, title="training")
    train.set_defaults(func=train_gpt)

    sample = commands.sample.add_parser(
        "gpt",
        help="generate text from a trained GPT run",
        description="Generate text from a trained GPT; the text streams as it is generated.",
    )
    sample.add_argument("--run", type=Path, required=True, help="run directory")
    sample.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    sample.add_argument("--max-new-tokens", type=int, default=500)
    sample.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--seed", type=int, default=1337)
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--no-cache", action="store_true", help="recompute the context every step")
    sample.add_argument("--checkpoint", choices=("best", "last"), default="best")
    sample.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a LoRA/QLoRA adapter directory (tinygen finetune gpt --out)",
    )
    sample.add_argument(
        "--merge", action="store_true", help="merge the adapter into the weights before sampling"
    )
    sample.add_argument("--device", default="auto")
    sample.set_defaults(func=sample_gpt)


def build_configs(args: argparse.Namespace) -> tuple[GPTConfig, TrainConfig]:
    base_model, base_train = PRESETS[args.preset]
    model_config = dataclass_from_args(GPTConfig, args, base_model)
    train_config = dataclass_from_args(TrainConfig, args, base_train)
    if args.max_iters is not None and args.lr_decay_iters is None:
        train_config = dataclasses.replace(train_config, lr_decay_iters=args.max_iters)
    return model_config, train_config


def train_gpt(args: argparse.Namespace) -> int:
    from tinygen.data.corpora import load_corpus, split_train_val
    from tinygen.data.text import TextTask, encode_corpus
    from tinygen.data.tokenizers import CharTokenizer
    from tinygen.train.trainer import Trainer

    model_config, train_config = build_configs(args)
    out = args.out or Path("runs") / f"gpt-{args.preset}"
    text = load_corpus(args.data)
    train_text, val_text = split_train_val(text)
    if args.resume:
        tokenizer = CharTokenizer.load(out)
    else:
        tokenizer = CharTokenizer.from_text(text)
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    train_ids = encode_corpus(train_text, tokenizer)
    val_ids = encode_corpus(val_text, tokenizer)
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    task = TextTask(model, train_ids, val_ids, model_config.block_size)
    run_config = {
        "model_type": "gpt",
        "model": dataclasses.asdict(model_config),
        "data": {"corpus": args.data, "characters": len(text), "val_fraction": 0.1},
    }
    if args.resume:
        _check_resume_matches(out, run_config)
    trainer = Trainer(
        task,
        train_config,
        out,
        run_config=run_config,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        tokenizer.save(out)
        print(
            f"GPT with {model.num_params() / 1e6:.2f}M parameters, vocabulary "
            f"{tokenizer.vocab_size}, {len(train_ids):,} training tokens -> {out}",
            file=sys.stderr,
        )
    result = trainer.fit()
    if interrupted(result, out):
        return 130
    if trainer.dist.is_main:
        print(
            f"done: step {result.step}, best val loss {result.best_val_loss:.4f}; sample "
            f"with: tinygen sample gpt --run {out}",
            file=sys.stderr,
        )
    return 0


def _check_resume_matches(out: Path, run_config: dict) -> None:
    from tinygen.train.runs import load_run_config

    saved = load_run_config(out)
    if saved["model"] != run_config["model"]:
        raise TinygenError(
            f"cannot resume {out}: it was trained with model config {saved['model']}, but "
            "these flags give a different one; repeat the original command plus --resume"
        )


def sample_gpt(args: argparse.Namespace) -> int:
    from tinygen.data.tokenizers import CharTokenizer
    from tinygen.train.device import resolve_device
    from tinygen.train.runs import load_model

    device = resolve_device(args.device)
    model, config = load_model(args.run, which=args.checkpoint, device="cpu")
    if config["model_type"] != "gpt":
        raise TinygenError(f"{args.run} holds a {config['model_type']} model, not a GPT")
    if args.adapter is not None:
        from tinygen.finetune.lora import load_adapter, merge_lora

        load_adapter(model, args.adapter)
        if args.merge:
            merge_lora(model)
    model = model.to(device).eval()
    tokenizer = CharTokenizer.load(args.run)
    if args.prompt == "":
        raise TinygenError("--prompt is empty; give at least one character (default is a newline)")
    if args.max_new_tokens < 0:
        raise TinygenError("--max-new-tokens must be >= 0")
    prompt = tokenizer.encode_tensor(args.prompt)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    assert isinstance(model, GPT)
    for i in range(args.num_samples):
        if i:
            sys.stdout.write("\n---------------\n")
        sys.stdout.write(args.prompt)
        for token in model.stream(
            prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            use_cache=not args.no_cache,
            generator=generator,
        ):
            sys.stdout.write(tokenizer.decode(token[0]))
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0
