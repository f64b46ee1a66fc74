"""Linear4bit (NF4 weight, dequantised on the fly) vs a float nn.Linear of the same shape:
forward + backward (gradient w.r.t. the input, as in QLoRA where the base is frozen),
timed side by side, interleaved, median of N repeats.

    flock /tmp/tinygen-cpu.lock python benchmarks/nf4_linear_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from tinygen.finetune.nf4 import Linear4bit


def step_time(layer: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    out = layer(x)
    out.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=768, help="rows of x (batch * time)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--shapes", default="128x512,512x128,1024x1024,4096x4096", help="comma-separated INxOUT"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    print(
        f"torch {torch.__version__}, {args.threads} threads, x = ({args.tokens}, in), "
        f"fp32, median of {args.repeats}"
    )
    print("| in x out | nn.Linear ms | Linear4bit (NF4+DQ) ms | ratio |")
    print("|---|---|---|---|")
    for n_in, n_out in shapes:
        torch.manual_seed(0)
        dense = nn.Linear(n_in, n_out).requires_grad_(False)
        quant = Linear4bit.from_linear(dense, double_quant=True)
        x = torch.randn(args.tokens, n_in, requires_grad=True)
        for _ in range(3):  # warm-up
            step_time(dense, x), step_time(quant, x)
        dense_times, quant_times = [], []
        for _ in range(args.repeats):
            dense_times.append(step_time(dense, x))
            quant_times.append(step_time(quant, x))
        d, q = statistics.median(dense_times), statistics.median(quant_times)
        print(f"| {n_in} x {n_out} | {1e3 * d:.3f} | {1e3 * q:.3f} | {q / d:.2f} |")


if __name__ == "__main__":
    main()
