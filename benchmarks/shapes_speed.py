"""Generation speed of the shapes world (CPU).

    python benchmarks/shapes_speed.py [--n 10000] [--repeats 5]

Times `generate_shapes(n)` at 32x32 and 64x64 (one object) and at 32x32 with two objects,
reporting the median of `repeats` runs in images/s. Then, side by side on the same shapes,
the vectorised anti-aliased drawing (`shapes_draw.coverage`) against its loop twin
(`draw_shape_reference`, one Python loop over pixels and subsamples), as a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygen.data import shapes_draw
from tinygen.data.shapes import generate_shapes


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size, two in ((32, False), (64, False), (32, True)):
        seconds = median_seconds(
            lambda size=size, two=two: generate_shapes(
                args.n, seed=0, image_size=size, two_objects=two
            ),
            args.repeats,
        )
        what = "two objects" if two else "one object"
        print(
            f"generate_shapes({args.n}, image_size={size}, {what}): median {seconds:.2f} s "
            f"= {args.n / seconds:,.0f} images/s"
        )
    # vectorised vs loop drawing of the same 6 shapes (one of each kind), 32x32
    centres, radius = torch.tensor([[0.5, 0.5]]), torch.tensor([0.21])
    fast = median_seconds(
        lambda: [shapes_draw.coverage(k, centres, radius, 32) for k in shapes_draw.SHAPE_KINDS],
        args.repeats,
    )
    slow = median_seconds(
        lambda: [
            shapes_draw.draw_shape_reference(k, (0.5, 0.5), 0.21, 32)
            for k in shapes_draw.SHAPE_KINDS
        ],
        1,
    )
    print(
        f"6 shapes at 32x32: vectorised {fast * 1e3:.1f} ms, loop reference {slow:.1f} s, "
        f"ratio {slow / fast:,.0f}x"
    )


if __name__ == "__main__":
    main()
