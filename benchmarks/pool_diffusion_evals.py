"""Pool several `tinygen eval diffusion` results (same settings, different --seed) into one
figure per setting, and the gap between two settings with its standard error.

DDPM-1000 costs 20x the network calls of DDIM-50, so a large-n comparison is run as several
one-thread processes with different seeds (docs/benchmarks.md, issue 6); this adds them up:

    python benchmarks/pool_diffusion_evals.py runs/diffusion-ddp/eval-ddpm-s1000/eval.json \
        runs/diffusion-ddp/eval-ddpm-s2000/eval.json --compare 'ddim-50 g2' 'ddpm-1000 g2'

Fidelity is a proportion of n images, so its standard error is sqrt(p (1 - p) / n); the two
settings' samples are treated as independent (a conservative error for the gap: they share
labels and initial noise, which only makes them more alike).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def setting_name(row: dict) -> str:
    name = f"{row['sampler']}-{row['steps']}"
    name += f" g{row['guidance']:g}"
    if row.get("eta", 0) and row["sampler"] == "ddim":
        name += f" eta{row['eta']:g}"
    if row.get("spacing", "leading") != "leading":
        name += f" {row['spacing']}"
    if row.get("classifier_scale", 0):
        name += f" cs{row['classifier_scale']:g}"
    return name


def pool(rows: list[dict]) -> dict[str, dict]:
    """Rows of eval.json files -> per setting: images n, correct k, fidelity p, stderr."""
    counts: dict[str, dict] = defaultdict(lambda: {"n": 0, "k": 0.0, "seconds": 0.0})
    for row in rows:
        c = counts[setting_name(row)]
        c["n"] += row["n"]
        c["k"] += row["fidelity"] * row["n"]
        c["seconds"] += row.get("seconds", 0.0)
    for c in counts.values():
        c["k"] = round(c["k"])
        p = c["k"] / c["n"]
        c["fidelity"] = p
        c["stderr"] = math.sqrt(p * (1 - p) / c["n"])
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evals", nargs="+", type=Path, help="eval.json files")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="two settings by the names of the table, e.g. 'ddim-50 g2' 'ddpm-1000 g2': "
        "reports B - A",
    )
    args = parser.parse_args()
    rows = [row for path in args.evals for row in json.loads(path.read_text())]
    pooled = pool(rows)
    print("| setting | n | correct | fidelity % | CPU seconds |")
    print("|---|---|---|---|---|")
    for name, c in pooled.items():
        print(
            f"| {name} | {c['n']} | {c['k']} | {100 * c['fidelity']:.1f} ± "
            f"{100 * c['stderr']:.1f} | {c['seconds']:.0f} |"
        )
    if args.compare:
        a, b = args.compare
        for name in (a, b):
            if name not in pooled:
                parser.error(
                    f"--compare {name!r} is not a setting here; choose from {list(pooled)}"
                )
        gap = pooled[b]["fidelity"] - pooled[a]["fidelity"]
        se = math.hypot(pooled[a]["stderr"], pooled[b]["stderr"])
        print(
            f"\n{b} - {a}: {100 * gap:+.1f} points ± {100 * se:.1f} "
            f"(95% interval {100 * (gap - 1.96 * se):+.1f} to {100 * (gap + 1.96 * se):+.1f})"
        )


if __name__ == "__main__":
    main()
