"""Accuracy of a trained shapes evaluator: clean and noisy test images, and held-out pairs.

    python benchmarks/shapes_evaluator.py [--run runs/evaluator] [--n 5000] [--device cpu]

For each split ("test": all 48 colour-shape pairs; "heldout": only the pairs the train
split never shows) and each Gaussian noise std (in [-1, 1] units, the residual noise a
diffusion sampler may leave), prints the per-attribute accuracy and the fraction of images
with all four attributes right, as a markdown table. Test seed 1: the trainer's own
accuracy log uses seed 0, and the test split is never trained on.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinygen.data.shapes import ATTRIBUTES, generate_shapes
from tinygen.eval.fidelity import load_evaluator, prompt_fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="evaluator run (default: the installed one)")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--noise", default="0,0.05,0.1,0.2,0.3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    evaluator = load_evaluator(args.run, device=args.device)
    sigmas = [float(s) for s in args.noise.split(",")]
    print(f"| split | noise std | {' | '.join(ATTRIBUTES)} | all four |")
    print("|---|---|" + "---|" * (len(ATTRIBUTES) + 1))
    for split in ("test", "heldout"):
        batch = generate_shapes(args.n, split=split, seed=args.seed)
        for sigma in sigmas:
            noise = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(7))
            images = (batch.images + sigma * noise).clamp(-1, 1)
            start = time.perf_counter()
            scores = prompt_fidelity(images, batch.prompts, evaluator=evaluator)
            elapsed = time.perf_counter() - start
            cells = " | ".join(f"{100 * scores[k]:.2f}%" for k in ATTRIBUTES)
            print(
                f"| {split} | {sigma:g} | {cells} | {100 * scores['all']:.2f}% |"
                f"  <!-- {args.n} images, {elapsed:.2f}s -->"
            )


if __name__ == "__main__":
    main()
