"""Run one `tinygen` training command with an older revision and with the working tree, and
say whether the two runs are the same: every logged loss (and evaluation metric) equal.

A refactor that moves code must not move a number: the trainer is deterministic on a CPU,
so the same command gives the same metrics.jsonl to the last bit unless the computation
changed. One thread per process, so the comparison also holds on a busy machine.

    python benchmarks/compare_revisions.py --base 1029110 -- \\
        train diffusion --preset tiny --image-size 16 --cond class --n-train 512 --max-iters 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("train_loss", "val_loss", "eval_train_loss")


def run(source: Path, argv: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(source / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tinygen", *argv, "--out", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {source}:\n{done.stderr[-2000:]}")


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kept = []
    for row in rows:  # losses and evaluation metrics; not timings or throughput
        values = {k: v for k, v in row.items() if k in KEYS or k.startswith(("acc", "zero"))}
        kept.append({"step": row["step"], **values})
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the older revision (commit or tag)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the tinygen command")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True
        )
        try:
            run(base, argv, tmp / "old")
            run(ROOT, argv, tmp / "new")
            old, new = metrics(tmp / "old"), metrics(tmp / "new")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)
    same = old == new
    print(f"{'identical' if same else 'DIFFERENT'}: {len(old)} / {len(new)} metric rows")
    print(f"  last row, {args.base}: {old[-1]}")
    print(f"  last row, working tree: {new[-1]}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
