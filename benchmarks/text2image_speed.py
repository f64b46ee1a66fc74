"""Sampling throughput of a text-to-image run: images/s of `generate` (DDIM, classifier-free
guidance: both branches in one batched forward), on this machine.

    OMP_NUM_THREADS=2 python benchmarks/text2image_speed.py --run runs/glide --batch 64 --steps 50

Prints one markdown row per repeat and the median; the first batch is a warm-up (not timed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygen.diffusion.sampling import SamplerConfig
from tinygen.recipes.text2image import load_text2image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipeline = load_text2image(args.run)
    prompts = ["a large red circle on the left", "a small blue star at the top"] * (args.batch // 2)
    prompts = prompts[: args.batch]
    sampler = SamplerConfig(steps=args.steps)
    pipeline.generate(prompts[:4], guidance=args.guidance, sampler=SamplerConfig(steps=2))
    rates = []
    print("| run | batch | DDIM steps | guidance | threads | images/s |\n|---|---|---|---|---|---|")
    for _ in range(args.repeats):
        start = time.perf_counter()
        pipeline.generate(
            prompts,
            guidance=args.guidance,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
        )
        rates.append(args.batch / (time.perf_counter() - start))
        print(
            f"| {args.run} | {args.batch} | {args.steps} | {args.guidance:g} | "
            f"{torch.get_num_threads()} | {rates[-1]:.2f} |"
        )
    print(f"\nmedian {statistics.median(rates):.2f} images/s")


if __name__ == "__main__":
    main()
