"""Generation speed of the shapes world (CPU).

    python benchmarks/shapes_speed.py [--n 10000] [--repeats 5]

Times `generate_shapes(n)` at 32x32 and 64x64 (one object) and at 32x32 with two objects,
with 1 and 2 torch threads, in interleaved rounds, reporting medians in images/s (on a
shared, loaded machine one thread is often faster: two threads spin waiting on each other).
Then, side by side on the same shapes, the vectorised anti-aliased drawing
(`shapes_draw.coverage`) against its loop twin (`draw_shape_reference`, one Python loop
over pixels and subsamples), as a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinygen.data import shapes_draw
from tinygen.data.shapes import generate_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts")
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    configs = [
        (threads, size, two)
        for threads in (int(t) for t in args.threads.split(","))
        for size, two in ((32, False), (64, False), (32, True))
    ]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):  # interleaved rounds: load changes hit every config alike
        for threads, size, two in configs:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            generate_shapes(args.n, seed=0, image_size=size, two_objects=two)
            times[(threads, size, two)].append(time.perf_counter() - start)
    for (threads, size, two), values in times.items():
        seconds = statistics.median(values)
        what = "two objects" if two else "one object"
        print(
            f"generate_shapes({args.n}, image_size={size}, {what}), {threads} thread(s): "
            f"median {seconds:.2f} s = {args.n / seconds:,.0f} images/s"
        )
    # vectorised vs loop drawing of the same 6 shapes (one of each kind), 32x32
    torch.set_num_threads(1)
    centres, radius = torch.tensor([[0.5, 0.5]]), torch.tensor([0.21])
    kinds = shapes_draw.SHAPE_KINDS
    fast = statistics.median(
        _seconds(lambda: [shapes_draw.coverage(k, centres, radius, 32) for k in kinds])
        for _ in range(5)
    )
    slow = _seconds(
        lambda: [shapes_draw.draw_shape_reference(k, (0.5, 0.5), 0.21, 32) for k in kinds]
    )
    print(
        f"6 shapes at 32x32, 1 thread: vectorised {fast * 1e3:.1f} ms, loop reference "
        f"{slow:.1f} s, ratio {slow / fast:,.0f}x"
    )


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
