"""Fine-tune a Shakespeare-pretrained GPT on Milton four ways -- full, LoRA, QLoRA (NF4)
and QLoRA with double quantisation -- each in its own process (so each peak RSS is its
own), with the same steps, batches and evaluation windows, and print one table.

    tinygen train gpt --preset baby --out runs/base-baby
    flock /tmp/tinygen-cpu.lock python benchmarks/finetune_gpt_milton.py --base runs/base-baby

Checks the issue's bars: LoRA's validation-loss improvement within 5% of full
fine-tuning's, and QLoRA's final validation loss within 2% of LoRA's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RUNS = (
    ("full", []),
    ("lora", []),
    ("qlora", ["--no-double-quant"]),
    ("qlora-dq", ["--double-quant"]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the pretrained GPT run directory")
    parser.add_argument("--out", default="runs/finetune-milton", help="parent of the four runs")
    parser.add_argument("--data", default="milton")
    parser.add_argument("--max-iters", type=int, default=500)
    parser.add_argument("--extra", default="", help="more flags for every run, space-separated")
    args = parser.parse_args()
    results = {}
    for label, flags in RUNS:
        out = Path(args.out) / label
        method = "qlora" if label.startswith("qlora") else label
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
            "--device",
            "cpu",
            "--no-progress",
            *flags,
            *args.extra.split(),
        ]
        print("$", " ".join(cmd[1:]), file=sys.stderr)
        subprocess.run(cmd, check=True)
        results[label] = json.loads((out / "finetune_result.json").read_text())

    print(f"\nbase {args.base}, data {args.data}, {args.max_iters} steps each\n")
    print(
        "| method | trainable params | val loss before | after | improvement | "
        "peak RSS (MiB) | weights+grads+AdamW estimate (MiB) | train time (s) | "
        "saved (KiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        saved = r["adapter_bytes"] / 1024 if r["adapter_bytes"] else None
        saved_text = f"{saved:.1f} (adapter)" if saved else "full model"
        print(
            f"| {label} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
            f"{r['val_loss_before']:.4f} | {r['val_loss_after']:.4f} | "
            f"{r['improvement']:.4f} | {r['peak_memory_bytes'] / 2**20:.0f} | "
            f"{r['estimated_bytes'] / 2**20:.2f} | {r['train_seconds']:.1f} | {saved_text} |"
        )
    full, lora = results["full"]["improvement"], results["lora"]["improvement"]
    print(
        f"\nLoRA improvement / full improvement = {lora / full:.3f} (bar: >= 0.95, i.e. within 5%)"
    )
    for label in ("qlora", "qlora-dq"):
        gap = results[label]["val_loss_after"] / results["lora"]["val_loss_after"] - 1
        print(f"{label} final val loss vs LoRA: {100 * gap:+.2f}% (bar: within 2%)")


if __name__ == "__main__":
    main()
