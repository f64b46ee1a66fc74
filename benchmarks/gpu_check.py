"""One prepared GPU session: correctness of the CUDA / bf16 / compile paths, then the
`shakespeare-char` time-to-validation-loss race against nanoGPT's 102 s on an H200.

    python benchmarks/gpu_check.py --data PATH/TO/tinyshakespeare.txt --out RESULTS_DIR

Time to target is measured from the launch of a fresh `python -m tinygen train gpt`
process (imports, data loading, CUDA start-up included) to the wall-clock time at which
the trainer logged a validation loss <= the target; the process is then stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def correctness_checks() -> dict:
    import torch

    from tinygen.models.gpt import GPT, GPTConfig

    out: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64)).cuda()
    model.eval()
    idx = torch.randint(0, 65, (4, 8), device="cuda")
    a = model.generate(idx, 100, temperature=0, use_cache=True)
    b = model.generate(idx, 100, temperature=0, use_cache=False)
    out["cuda_kv_cache_equals_no_cache"] = bool(torch.equal(a, b))
    x = torch.randint(0, 65, (8, 64), device="cuda")
    _, loss32 = model(x, x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss16 = model(x, x)
    out["bf16_vs_fp32_loss_abs_diff"] = abs(loss32.item() - loss16.item())
    start = time.perf_counter()
    compiled = torch.compile(model)
    model.train()
    _, loss_c = compiled(x, x)
    loss_c.backward()
    torch.cuda.synchronize()
    out["compile_first_step_s"] = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        out["compile_vs_eager_logits_max_diff"] = (compiled(x)[0] - model(x)[0]).abs().max().item()
    return out


def race(data: str, run_dir: Path, target: float, flags: list[str], limit_s: float) -> dict:
    """Launch a training process and stop it once validation loss reaches `target`."""
    cmd = [
        sys.executable,
        "-m",
        "tinygen",
        "train",
        "gpt",
        "--preset",
        "shakespeare-char",
        "--data",
        data,
        "--out",
        str(run_dir),
        "--device",
        "cuda",
        "--no-progress",
        *flags,
    ]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = None
    rows: list[dict] = []
    while proc.poll() is None and time.time() - start < limit_s:
        time.sleep(0.2)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            hits = [r for r in rows if r.get("val_loss", 9) <= target]
            if hits:
                reached = hits[0]
                break
    proc.kill()
    log = proc.communicate()[0][-3000:]
    vals = [
        (r["step"], round(r["val_loss"], 4), round(r["time"] - start, 1))
        for r in rows
        if "val_loss" in r
    ]
    per_s = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][2:]
    return {
        "command": " ".join(cmd),
        "reached_target": reached is not None,
        "seconds_from_launch_to_target": None if reached is None else reached["time"] - start,
        "step_at_target": None if reached is None else reached["step"],
        "val_curve_(step,loss,s)": vals,
        "median_tokens_per_s": sorted(per_s)[len(per_s) // 2] if per_s else None,
        "log_tail": log,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, default=1.48)
    parser.add_argument("--limit", type=float, default=120)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    recipes = {
        "b256_lr2e-3": [
            "--batch-size",
            "256",
            "--learning-rate",
            "2e-3",
            "--min-lr",
            "2e-4",
            "--max-iters",
            "1000",
            "--warmup-iters",
            "100",
            "--eval-interval",
            "50",
            "--eval-iters",
            "40",
            "--log-interval",
            "50",
        ],
        "b512_lr3e-3": [
            "--batch-size",
            "512",
            "--learning-rate",
            "3e-3",
            "--min-lr",
            "3e-4",
            "--max-iters",
            "600",
            "--warmup-iters",
            "60",
            "--eval-interval",
            "50",
            "--eval-iters",
            "20",
            "--log-interval",
            "50",
        ],
    }
    for name, flags in recipes.items():
        results[name] = race(
            args.data, Path("/tmp") / f"race-{name}", args.target, flags, args.limit
        )
        print(
            json.dumps(
                {name: {k: v for k, v in results[name].items() if k != "log_tail"}}, indent=1
            ),
            flush=True,
        )
        (args.out / "gpu_results.json").write_text(json.dumps(results, indent=1))
    try:
        results["checks"] = correctness_checks()
    except Exception as e:  # report, do not lose the race results
        results["checks"] = {"error": repr(e)}
    print(json.dumps(results["checks"], indent=1), flush=True)
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
