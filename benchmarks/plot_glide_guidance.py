"""GLIDE's comparison in one picture: fidelity against feature distance for classifier-free
guidance scales and CLIP-guidance scales on the same model, prompts and seeds, from the two
`tinygen eval text2image` reports (docs/benchmarks.md, section glide). The unconditional
rows (CFG 0: 1.6 % at distance 290) are left out, so the axes show where the two guidances
differ.

    python benchmarks/plot_glide_guidance.py runs/glide/eval-text2image-single \
        runs/glide/eval-clip-guidance-ft --out docs/glide_guidance.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinygen.eval.text2image_report import plot_guidance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="eval-text2image directories")
    parser.add_argument("--out", type=Path, default=Path("docs/glide_guidance.png"))
    args = parser.parse_args()
    rows = [row for d in args.reports for row in json.loads((d / "eval.json").read_text())]
    rows = [row for row in rows if row["guidance"] > 0]
    title = "GLIDE on shapes: CFG 1-5 vs CLIP guidance at CFG 1 (n = 256)"
    plot_guidance(rows, args.out, title=title)
    print(f"wrote {args.out} from {len(rows)} rows")


if __name__ == "__main__":
    main()
