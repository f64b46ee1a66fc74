"""`tinygen finetune toy|gpt|hf` and `tinygen memory`: LoRA, QLoRA and their arithmetic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    checked,
    dataclass_from_args,
    positive_float,
    positive_int,
    train_config_from_args,
)
from tinygen.train.config import TrainConfig


def register(commands) -> None:
    """Add this family's subcommands to `commands` (see tinygen.cli.main.Commands)."""
    from tinygen.recipes.finetune_gpt import DEFAULT_LR, FinetuneConfig, default_train_config
    from tinygen.recipes.finetune_hf import DEFAULT_TRAIN
    from tinygen.recipes.finetune_toy import ToyConfig

    finetune = commands.root.add_parser(
        "finetune",
        help="LoRA / QLoRA fine-tuning (toy, our GPT, Hugging Face models)",
        description="Parameter-efficient fine-tuning: LoRA (Hu et al. 2021) and QLoRA "
        "(Dettmers et al. 2023).",
    )
    kinds = finetune.add_subparsers(dest="kind", metavar="KIND", required=True)

    toy = kinds.add_parser(
        "toy",
        help="LoRA-adapt a 2-D classifier to a rotated task",
        description="Train an MLP on two moons, then LoRA-adapt it to the rotated task; "
        "draws both decision boundaries (seconds on a CPU).",
    )
    add_dataclass_flags(toy, ToyConfig)
    toy.add_argument(
        "--out",
        type=Path,
        default=Path("runs/finetune-toy"),
        help="where the picture and runs go (default runs/finetune-toy)",
    )
    toy.set_defaults(func=run_toy_command)

    gpt = kinds.add_parser(
        "gpt",
        help="fine-tune a trained GPT or GPT-2: full | lora | qlora",
        description="Fine-tune a `tinygen train gpt` run or GPT-2 (--base hf:gpt2) on "
        "another corpus: every weight "
        "(full), a LoRA adapter, or one on 4-bit NF4 weights (qlora). The training defaults "
        "shown are --method lora's; the learning rate is "
        + ", ".join(f"{lr:g} for {method}" for method, lr in DEFAULT_LR.items())
        + " (the floor a tenth of it).",
    )
    gpt.add_argument(
        "--base",
        required=True,
        help="run directory of the base GPT, or hf:NAME_OR_DIR for OpenAI's GPT-2 in our GPT "
        "(hf:gpt2, hf:gpt2-medium, hf:DIR of a transformers GPT-2 checkpoint)",
    )
    gpt.add_argument("--out", type=Path, required=True, help="output directory")
    gpt.add_argument("--resume", action="store_true", help="continue the run in --out")
    gpt.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_flags(gpt, FinetuneConfig, title="fine-tuning")
    add_dataclass_flags(
        gpt,
        TrainConfig,
        title="training",
        defaults=default_train_config("lora"),
        source="--method lora's",
    )
    gpt.set_defaults(func=run_gpt_command)

    hf = kinds.add_parser(
        "hf",
        help="LoRA / QLoRA on a Hugging Face causal LM (transformers + PEFT)",
        description="LoRA or QLoRA on a Hugging Face causal language model through PEFT; "
        "saves an adapter PEFT loads. The training defaults shown are this command's.",
    )
    hf.add_argument("--model", required=True, help="hub name or local model directory")
    hf.add_argument("--data", type=Path, required=True, help="UTF-8 text file to train on")
    hf.add_argument(
        "--method",
        choices=("lora", "qlora"),
        default="lora",
        help="lora, or qlora (4-bit NF4 base weights)",
    )
    hf.add_argument("--out", type=Path, required=True, help="where the adapter goes")
    hf.add_argument("--r", type=positive_int, default=8, help="LoRA rank (default 8)")
    hf.add_argument("--alpha", type=positive_float, default=16.0, help="LoRA alpha (default 16)")
    hf.add_argument(
        "--lora-dropout",
        type=checked(float, min=0, below=1),
        default=0.05,
        help="dropout on the adapter's input",
    )
    hf.add_argument(
        "--targets",
        default="all-linear",
        help="comma-separated module names or all-linear (default)",
    )
    hf.add_argument(
        "--block-size", type=positive_int, default=256, help="tokens per training window"
    )
    hf.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_flags(
        hf, TrainConfig, title="training", defaults=DEFAULT_TRAIN, source="this command's"
    )
    hf.set_defaults(func=run_hf_command)

    memory = commands.root.add_parser(
        "memory",
        help="parameter counts and memory of full / LoRA / QLoRA fine-tuning",
        description="Weight memory in fp32/fp16/int8/NF4/NF4+DQ and training memory of full "
        "fine-tuning vs LoRA vs QLoRA, from a built-in config, a Hugging Face "
        "config.json or a tinygen run directory.",
    )
    memory.add_argument(
        "--model",
        required=True,
        help="llama-2-7b | llama-2-13b | llama-2-70b | gpt2 | gpt2-medium | gpt2-large | "
        "gpt2-xl | sd-v1-5 (sampling memory at --height x --width by precision) | HF "
        "config.json or model directory | tinygen run directory",
    )
    memory.add_argument("--height", type=positive_int, default=512, help="sd-v1-5: pixels")
    memory.add_argument("--width", type=positive_int, default=512, help="sd-v1-5: pixels")
    memory.add_argument("--r", type=positive_int, default=8, help="LoRA rank (default 8)")
    memory.add_argument(
        "--targets",
        default=None,
        help="comma-separated LoRA targets (default q_proj,v_proj for LLaMA, qkv_proj for our GPT)",
    )
    memory.set_defaults(func=run_memory_command)


def _split_targets(targets: str | None) -> str | list[str] | None:
    if targets is None or targets == "all-linear":
        return targets
    return [t.strip() for t in targets.split(",") if t.strip()]


def run_toy_command(args: argparse.Namespace) -> int:
    from tinygen.recipes.finetune_toy import ToyConfig, run_toy

    result = run_toy(dataclass_from_args(ToyConfig, args), args.out)
    print(result.summary())
    print(f"decision boundaries before/after: {result.picture}")
    return 0


def run_gpt_command(args: argparse.Namespace) -> int:
    from tinygen.recipes.finetune_gpt import FinetuneConfig, default_train_config, finetune_gpt

    ft = dataclass_from_args(FinetuneConfig, args)
    ft.validate()
    train = train_config_from_args(args, default_train_config(ft.method))  # (floor: lr / 10)
    try:
        result = finetune_gpt(
            args.base, args.out, ft, train, resume=args.resume, progress=not args.no_progress
        )
    except KeyboardInterrupt:
        print(
            f"interrupted; checkpoint saved in {args.out}. Continue with the same command "
            "plus --resume",
            file=sys.stderr,
        )
        return 130
    print(result.summary())
    pretrained = args.base.startswith("hf:")
    base = f"--hf {args.base[3:]}" if pretrained else f"--run {args.base}"
    if ft.method == "full":
        model = f"--hf {args.out / 'hf'}" if pretrained else f"--run {args.out}"
        print(f"sample with: tinygen sample gpt {model}")
    else:
        print(f"sample with: tinygen sample gpt {base} --adapter {args.out} [--merge]")
    return 0


def run_hf_command(args: argparse.Namespace) -> int:
    from tinygen.recipes.finetune_hf import DEFAULT_TRAIN, finetune_hf

    train = train_config_from_args(args, DEFAULT_TRAIN)
    result = finetune_hf(
        args.model,
        args.data,
        args.out,
        method=args.method,
        r=args.r,
        alpha=args.alpha,
        dropout=args.lora_dropout,
        targets=_split_targets(args.targets),
        block_size=args.block_size,
        train=train,
        progress=not args.no_progress,
    )
    print(result.summary())
    return 0


def run_memory_command(args: argparse.Namespace) -> int:
    from tinygen.finetune.memory import memory_report, resolve_inventory

    if args.model == "sd-v1-5":
        from tinygen.models.stable_diffusion_memory import stable_diffusion_memory

        for precision in ("fp32", "bf16", "fp16"):
            report = stable_diffusion_memory(precision, args.height, args.width)
            print(f"## Stable Diffusion v1.5, {precision}, {args.height}x{args.width}")
            print("\n".join(report["arithmetic"]) + "\n")
        return 0

    print(memory_report(resolve_inventory(args.model), _split_targets(args.targets), args.r))
    return 0
