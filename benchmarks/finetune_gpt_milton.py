"""Fine-tune a Shakespeare-pretrained GPT on Milton four ways -- full, LoRA, QLoRA (NF4)
and QLoRA with double quantisation -- each in its own process (so each peak RSS is its
own), with the same steps, batches and evaluation windows, and print one table. Full
fine-tuning and LoRA each get a small learning-rate sweep (the best final validation loss
is kept, as a practitioner would tune each); QLoRA reuses LoRA's best rate untuned.

    tinygen train gpt --preset baby --out runs/base-baby
    flock /tmp/tinygen-cpu.lock python benchmarks/finetune_gpt_milton.py --base runs/base-baby

Checks the issue's bars: LoRA's validation-loss improvement within 5% of full
fine-tuning's, and QLoRA's final validation loss within 2% of LoRA's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run(args: argparse.Namespace, label: str, method: str, lr: float, flags: list[str]) -> dict:
    out = Path(args.out) / f"{label}-lr{lr:g}"
    cmd = [
        sys.executable,
        "-m",
        "tinygen.cli.main",
        "finetune",
        "gpt",
        "--base",
        args.base,
        "--out",
        str(out),
        "--method",
        method,
        "--data",
        args.data,
        "--max-iters",
        str(args.max_iters),
        "--learning-rate",
        str(lr),
        "--device",
        "cpu",
        "--no-progress",
        *flags,
        *args.extra.split(),
    ]
    print("$ tinygen", " ".join(cmd[3:]), file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return {**json.loads((out / "finetune_result.json").read_text()), "lr": lr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the pretrained GPT run directory")
    parser.add_argument("--out", default="runs/finetune-milton", help="parent of the runs")
    parser.add_argument("--data", default="milton")
    parser.add_argument("--max-iters", type=int, default=500)
    parser.add_argument("--full-lrs", default="3e-4,1e-3", help="learning rates tried for full")
    parser.add_argument("--lora-lrs", default="2e-3,5e-3,1e-2", help="... and for LoRA")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1: robust to a shared CPU)"
    )
    parser.add_argument("--extra", default="", help="more flags for every run, space-separated")
    args = parser.parse_args()
    lrs = {m: [float(x) for x in getattr(args, f"{m}_lrs").split(",")] for m in ("full", "lora")}
    sweep = {m: [run(args, m, m, lr, []) for lr in lrs[m]] for m in ("full", "lora")}
    best = {m: min(rows, key=lambda r: r["val_loss_after"]) for m, rows in sweep.items()}
    results = dict(best)
    lora_lr = best["lora"]["lr"]  # QLoRA trains with LoRA's best learning rate, untuned
    results["qlora"] = run(args, "qlora", "qlora", lora_lr, ["--no-double-quant"])
    results["qlora-dq"] = run(args, "qlora-dq", "qlora", lora_lr, ["--double-quant"])

    print(f"\nbase {args.base}, data {args.data}, {args.max_iters} steps each\n")
    print(
        "learning-rate sweep (final val loss): "
        + "; ".join(
            f"{m} " + ", ".join(f"{r['lr']:g} -> {r['val_loss_after']:.4f}" for r in rows)
            for m, rows in sweep.items()
        )
        + "\n"
    )
    print(
        "| method | lr | trainable params | val loss before | after | improvement | "
        "peak RSS (MiB) | weights+grads+AdamW estimate (MiB) | train time (s) | saved |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        saved = f"{r['adapter_bytes'] / 1024:.1f} KiB adapter" if r["adapter_bytes"] else "model"
        print(
            f"| {label} | {r['lr']:g} | {r['trainable']:,} "
            f"({100 * r['trainable'] / r['total']:.2f}%) | {r['val_loss_before']:.4f} | "
            f"{r['val_loss_after']:.4f} | {r['improvement']:.4f} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} | {r['estimated_bytes'] / 2**20:.2f} | "
            f"{r['train_seconds']:.1f} | {saved} |"
        )
    full, lora = results["full"]["improvement"], results["lora"]["improvement"]
    print(
        f"\nLoRA improvement / full improvement = {lora / full:.3f} (bar: >= 0.95, i.e. within 5%)"
    )
    for label in ("qlora", "qlora-dq"):
        gap = results[label]["val_loss_after"] / results["lora"]["val_loss_after"] - 1
        print(f"{label} final val loss vs LoRA: {100 * gap:+.3f}% (bar: within 2%)")


if __name__ == "__main__":
    main()
