"""tinygen against nanoGPT, side by side in one run: the baby config, whole processes.

Each program runs as a user would run it, alternated in one run, on the same corpus, on a
quiet CPU and beside one and two competing busy processes:

    tinygen:  python -m tinygen train gpt --preset baby --data COPY --max-iters N --out TMP
    nanoGPT:  python train.py config/train_shakespeare_char.py --device=cpu --compile=False
              --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
              --n_head=4 --n_embd=128 --max_iters=N --lr_decay_iters=N --dropout=0.0
              (its README's CPU command, plus --out_dir=TMP)

It prints a markdown table of wall seconds (median, min-max over the repeats), the ratio
nanoGPT/tinygen (above 1: tinygen is faster), the median step time of each (from their own
logs), and where tinygen's time goes: start-up (python, imports, parser), data and model,
the steps, evaluation, checkpoints, the end-of-run pictures, and exit. The phases come
from a `sitecustomize` put on tinygen's PYTHONPATH that times a handful of calls (no
per-step cost: it wraps `build_parser`, `Trainer.fit`, `_evaluate`, the checkpoint
writers and the end pictures), so no timing code lives in the trainer.

Thread settings of the caller's shell (OMP_*, GOMP_*, MKL_NUM_THREADS, ...) are removed
from both programs' environment, so each runs its own defaults (--inherit-thread-env keeps
them). A busy process is a pure-Python spin loop (`--busy spin`, one core, no memory
traffic) or a one-thread numpy 256x256 matmul loop (`--busy matmul`).

Prepare nanoGPT first (offline, on the same corpus):

    ../shared/anchors/prepare_nanogpt.sh /work/.mirror/karpathy+nanoGPT/repo /tmp/nanogpt

    python benchmarks/nanogpt_side_by_side.py --nanogpt /tmp/nanogpt \\
        --data ../shared/data/tinyshakespeare.txt --iters 400,2000 --repeats 3 --out results.json
    python benchmarks/nanogpt_side_by_side.py ... --dry-run        # ~5 iterations each, seconds

Other tinygen settings can run beside the default in the same alternation, e.g.
`--variant "fp32=--precision fp32" --variant "spin2=OMP_NUM_THREADS=2"` (a label, then
tokens: NAME=VALUE sets an environment variable, anything else is a tinygen flag).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_ENV = re.compile(
    r"^(OMP_|GOMP_|KMP_|MKL_NUM_THREADS|OPENBLAS_NUM_THREADS|TORCH_NUM_THREADS|NUMEXPR_)"
)
BUSY = {
    "spin": "while True: pass",
    "matmul": (
        "import numpy as np\na = np.random.rand(256, 256)\nwhile True: a = (a @ a) / 256.0 + 0.001"
    ),
}
CONDITIONS = {"quiet": 0, "busy1": 1, "busy2": 2}
TOKENS_PER_STEP = 12 * 64  # the baby config's batch x block

# Timing hooks for the tinygen process, imported by Python at start-up as `sitecustomize`.
PHASE_HOOKS = r"""
import atexit, importlib.abc, importlib.util, json, os, sys, time

_t = {"start": time.time(), "evaluation": 0.0, "checkpoint": 0.0, "checkpoint_in_eval": 0.0,
      "pictures": 0.0}
_depth = {"checkpoint": 0, "evaluation": 0}


def _timed(fn, phase):
    def wrapper(*args, **kwargs):
        _depth[phase] = _depth.get(phase, 0) + 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth[phase] -= 1
            if _depth[phase] == 0:
                spent = time.perf_counter() - t0
                _t[phase] += spent
                if phase == "checkpoint" and _depth["evaluation"]:
                    _t["checkpoint_in_eval"] += spent
    return wrapper


def _stamp(fn, before, after):
    def wrapper(*args, **kwargs):
        _t.setdefault(before, time.time())
        try:
            return fn(*args, **kwargs)
        finally:
            _t[after] = time.time()
    return wrapper


def _patch(module):
    if module.__name__ == "tinygen.cli.main":
        module.build_parser = _stamp(module.build_parser, "parser_start", "imports_done")
    elif module.__name__ == "tinygen.train.checkpoint":
        for name in ("save_state", "save_weights"):
            if hasattr(module, name):
                setattr(module, name, _timed(getattr(module, name), "checkpoint"))
    elif module.__name__ == "tinygen.train.trainer":
        cls = module.Trainer
        cls.fit = _stamp(cls.fit, "fit_start", "fit_end")
        for name, phase in (("_evaluate", "evaluation"), ("save_checkpoint", "checkpoint"),
                            ("_draw_end_pictures", "pictures")):
            if hasattr(cls, name):
                setattr(cls, name, _timed(getattr(cls, name), phase))


class _Finder(importlib.abc.MetaPathFinder):
    names = {"tinygen.cli.main", "tinygen.train.checkpoint", "tinygen.train.trainer"}

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _Finder())


@atexit.register
def _write():
    _t["exit_start"] = time.time()
    with open(os.environ["TINYGEN_PHASES_OUT"], "w") as f:
        json.dump(_t, f)
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="nanoGPT work tree, prepared")
    p.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    p.add_argument("--iters", default="400,2000", help="comma-separated iteration counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conditions", default="quiet,busy1,busy2", help="quiet, busy1, busy2")
    p.add_argument("--busy", choices=sorted(BUSY), default="spin", help="what a busy process runs")
    p.add_argument("--variant", action="append", default=[], help='"LABEL=TOKENS", repeatable')
    p.add_argument("--out", type=Path, default=Path("nanogpt_side_by_side.json"))
    p.add_argument("--python", default=sys.executable, help="the python both programs run on")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--inherit-thread-env", action="store_true", help="keep OMP_* etc.")
    p.add_argument("--dry-run", action="store_true", help="~5 iterations each, one repeat")
    return p.parse_args()


def parse_variant(spec: str) -> tuple[str, dict, list[str]]:
    label, _, tokens = spec.partition("=")
    env, flags = {}, []
    for token in tokens.split():
        name, eq, value = token.partition("=")
        if eq and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            env[name] = value
        else:
            flags.append(token)
    return label.strip(), env, flags


def base_env(inherit: bool) -> dict:
    env = dict(os.environ)
    if not inherit:
        env = {k: v for k, v in env.items() if not THREAD_ENV.match(k)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_busy(count: int, kind: str, python: str) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [python, "-c", BUSY[kind]],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]
    time.sleep(1.0 if procs else 0.0)  # let them reach the run queue
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def run(cmd: list[str], cwd: Path | None, env: dict, timeout: float) -> tuple[float, str, int]:
    """Wall seconds of one whole process, its output (stdout + stderr), its exit code."""
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:  # stopped at the limit: a failed run, not a crash
        output = (e.stdout or b"") + (e.stderr or b"")
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return time.time() - t0, text + f"\n[stopped after {timeout:g} s]", -9
    return time.time() - t0, proc.stdout + proc.stderr, proc.returncode


def run_tinygen(args, work: Path, iters: int, variant, hooks: Path) -> dict:
    label, extra_env, flags = variant
    out = Path(tempfile.mkdtemp(dir=work, prefix="tinygen-"))
    phases_file = out / "phases.json"
    env = base_env(args.inherit_thread_env)
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), *filter(None, [env.get("PYTHONPATH", "")])])
    env["TINYGEN_PHASES_OUT"] = str(phases_file)
    cmd = [
        args.python, "-m", "tinygen", "train", "gpt", "--preset", "baby",
        "--data", str(work / "tinyshakespeare.txt"), "--max-iters", str(iters),
        "--out", str(out / "run"), *flags,
    ]  # fmt: skip
    t0 = time.time()
    wall, log, code = run(cmd, None, env, args.timeout)
    t_end = t0 + wall
    result = {"program": label, "wall_s": wall, "returncode": code, "cmd": cmd}
    result["log_tail"] = log.replace("\r", "\n").splitlines()[-6:]
    for line in log.replace("\r", "\n").splitlines():
        if line.startswith(("precision ", "warning: precision ")):
            result["precision"] = line
        elif line.startswith("threads: "):
            result["threads"] = line
    done = re.findall(r"step \d+: train [\d.]+, val ([\d.]+)", log)
    result["last_val_loss"] = float(done[-1]) if done else None
    metrics = out / "run" / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        if rates:
            result["step_ms"] = 1000 * TOKENS_PER_STEP / statistics.median(rates)
    if phases_file.is_file():
        p = json.loads(phases_file.read_text())
        fit = p.get("fit_end", t_end) - p.get("fit_start", t_end)
        checkpoint = p["checkpoint"]
        evaluation = max(0.0, p["evaluation"] - p["checkpoint_in_eval"])
        result["phases_s"] = {
            "start-up": p.get("imports_done", t0) - t0,
            "data+model": p.get("fit_start", t_end) - p.get("imports_done", t0),
            "steps": fit - evaluation - checkpoint - p["pictures"],
            "evaluation": evaluation,
            "checkpoints": checkpoint,
            "pictures": p["pictures"],
            "exit": t_end - p.get("fit_end", t_end),
            "exit: interpreter teardown": t_end - p.get("exit_start", t_end),
        }
    shutil.rmtree(out, ignore_errors=True)
    return result


def run_nanogpt(args, work: Path, iters: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix="nanogpt-"))
    cmd = [
        args.python, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
        "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
        f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
        f"--out_dir={out}",
    ]  # fmt: skip
    wall, log, code = run(cmd, args.nanogpt, base_env(args.inherit_thread_env), args.timeout)
    result = {"program": "nanoGPT", "wall_s": wall, "returncode": code, "cmd": cmd}
    result["log_tail"] = log.splitlines()[-6:]
    # per-iteration times, leaving out iteration 0 and those that evaluated (every 250)
    times = [
        float(ms)
        for it, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", log)
        if int(it) % 250 != 0
    ]
    if times:
        result["step_ms"] = statistics.median(times)
    vals = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", log)
    result["last_val_loss"] = float(vals[-1]) if vals else None
    shutil.rmtree(out, ignore_errors=True)
    return result


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(results: list[dict], labels: list[str], busy: str) -> str:
    lines = [
        f"| condition | iters | nanoGPT s | {' | '.join(f'{v} s' for v in labels)} | "
        + " | ".join(f"nanoGPT/{v}" for v in labels)
        + " | ms/step nanoGPT | "
        + " | ".join(f"ms/step {v}" for v in labels)
        + " | tinygen threads |",
    ]
    lines.append("|" + "---|" * (5 + 3 * len(labels)))
    phase_lines = [
        "| condition | iters | program | start-up | data+model | steps | evaluation | "
        "checkpoints | pictures | exit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["condition"], r["iters"]) for r in results},
        key=lambda k: (list(CONDITIONS).index(k[0]), k[1]),
    )
    for condition, iters in keys:
        group = [r for r in results if (r["condition"], r["iters"]) == (condition, iters)]
        by = {p: [r for r in group if r["program"] == p] for p in ["nanoGPT", *labels]}
        nano = median_of(by["nanoGPT"], "wall_s")
        walls = [spread([r["wall_s"] for r in by[v]]) for v in labels]
        ratios = []
        for v in labels:
            mine = median_of(by[v], "wall_s")
            ratios.append(f"{nano / mine:.2f}x" if nano and mine else "-")
        steps = [median_of(by[p], "step_ms") for p in ["nanoGPT", *labels]]
        threads = next((r.get("threads") for r in by[labels[0]] if r.get("threads")), "-")
        name = (
            f"{condition} ({CONDITIONS[condition]} x {busy})"
            if CONDITIONS[condition]
            else condition
        )
        lines.append(
            f"| {name} | {iters} | {spread([r['wall_s'] for r in by['nanoGPT']])} | "
            + " | ".join(walls)
            + " | "
            + " | ".join(ratios)
            + " | "
            + " | ".join(f"{s:.1f}" if s else "-" for s in steps)
            + f" | {threads.removeprefix('threads: ')} |"
        )
        for v in labels:
            phases = [r["phases_s"] for r in by[v] if "phases_s" in r]
            if not phases:
                continue
            cells = [
                f"{statistics.median(p[k] for p in phases):.2f}"
                for k in ("start-up", "data+model", "steps", "evaluation", "checkpoints",
                          "pictures", "exit")
            ]  # fmt: skip
            phase_lines.append(f"| {condition} | {iters} | {v} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + "\n\ntinygen's time by phase (median seconds):\n\n"
        + "\n".join(phase_lines)
    )


def main() -> int:
    args = parse_args()
    iters_list = [5] if args.dry_run else [int(x) for x in args.iters.split(",") if x]
    repeats = 1 if args.dry_run else args.repeats
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        sys.exit(f"unknown --conditions {unknown}; choose from {', '.join(CONDITIONS)}")
    prepared = args.nanogpt / "data" / "shakespeare_char" / "train.bin"
    if not (args.nanogpt / "train.py").is_file() or not prepared.is_file():
        sys.exit(
            f"{args.nanogpt} is not a prepared nanoGPT work tree (train.py, {prepared}); run "
            "../shared/anchors/prepare_nanogpt.sh MIRROR DEST first"
        )
    nano_corpus = args.nanogpt / "data" / "shakespeare_char" / "input.txt"
    same_corpus = nano_corpus.is_file() and nano_corpus.read_bytes() == args.data.read_bytes()
    if not same_corpus:
        print(f"warning: {nano_corpus} differs from {args.data}", file=sys.stderr)
    variants = [("tinygen", {}, [])] + [parse_variant(v) for v in args.variant]
    labels = [v[0] for v in variants]
    commit = subprocess.run(
        ["git", "-C", str(args.nanogpt), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        work = Path(tmp)
        shutil.copyfile(args.data, work / "tinyshakespeare.txt")
        hooks = work / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(PHASE_HOOKS)
        for condition in conditions:
            busy = start_busy(CONDITIONS[condition], args.busy, args.python)
            try:
                for repeat in range(repeats):
                    for iters in iters_list:
                        programs = ["nanoGPT", *labels]
                        if repeat % 2:  # alternate who goes first
                            programs.reverse()
                        for program in programs:
                            load = os.getloadavg()[0]
                            if program == "nanoGPT":
                                r = run_nanogpt(args, work, iters)
                            else:
                                variant = variants[labels.index(program)]
                                r = run_tinygen(args, work, iters, variant, hooks)
                            r.update(condition=condition, iters=iters, repeat=repeat, load1=load)
                            results.append(r)
                            status = "" if r["returncode"] == 0 else f" FAILED ({r['returncode']})"
                            print(
                                f"{condition} iters={iters} #{repeat} {program}: "
                                f"{r['wall_s']:.1f} s{status}",
                                file=sys.stderr,
                                flush=True,
                            )
                            if r["returncode"] != 0:
                                print("\n".join(r["log_tail"]), file=sys.stderr)
            finally:
                stop_busy(busy)
    report = table([r for r in results if r["returncode"] == 0], labels, args.busy)
    failed = [r for r in results if r["returncode"] != 0]
    if failed:
        report += f"\n\n{len(failed)} failed runs left out (their log tails are in {args.out})"
    import torch

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "nanogpt_commit": commit,
        "same_corpus": same_corpus,
        "busy": args.busy,
        "dry_run": args.dry_run,
        "thread_env_inherited": args.inherit_thread_env,
        "variants": {label: {"env": env, "flags": flags} for label, env, flags in variants},
    }
    args.out.write_text(json.dumps({"meta": meta, "runs": results, "table": report}, indent=1))
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
