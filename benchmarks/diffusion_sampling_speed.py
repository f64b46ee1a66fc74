"""Sampling throughput of a trained diffusion run: DDIM-50 at batch 64, images/s (median
of `--repeats` runs), without guidance (one forward per step) and with classifier-free
guidance (both branches in one batched forward, 2 x 64 images per step).

    flock /tmp/tinygen-cpu.lock python benchmarks/diffusion_sampling_speed.py \
        --run runs/diffusion-shapes --batch 64 --steps 50 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tinygen.train.runs import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model, _ = load_model(args.run, which="ema", device=args.device)
    labels = torch.arange(args.batch) % model.config.num_classes
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
        f"{model.num_params() / 1e6:.2f}M parameters, DDIM-{args.steps}, batch {args.batch}"
    )
    for guidance in (1.0, 2.0):
        times = []
        for i in range(args.repeats + 1):  # the first run warms up
            gen = torch.Generator(device=args.device).manual_seed(i)
            start = time.perf_counter()
            model.generate(
                args.batch, labels=labels, guidance=guidance, steps=args.steps, generator=gen
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        label = "no guidance" if guidance == 1.0 else f"CFG scale {guidance:g} (2x batch)"
        print(
            f"{label}: {args.batch / statistics.median(times):.1f} images/s "
            f"(median {statistics.median(times):.2f} s per batch of {args.batch})"
        )


if __name__ == "__main__":
    main()
