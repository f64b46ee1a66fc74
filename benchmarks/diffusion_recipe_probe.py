"""Probe diffusion training recipes: prompt fidelity (DDIM-50) of the EMA model every
`--eval-every` steps, for one recipe. Used to choose the 30-minute CPU recipe; runs
anywhere (`--device cuda` to probe quickly), needs a trained shapes evaluator.

    python benchmarks/diffusion_recipe_probe.py --name a --base 32 --mult 1,2,2 --res 1 \
        --iters 2000 --eval-every 500 --out runs/probe
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tinygen.data.image_data import ImageData
from tinygen.eval.diffusion_eval import Setting, evaluate_settings
from tinygen.eval.fidelity import load_evaluator
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.nn.unet import UNetConfig
from tinygen.recipes.diffusion import DiffusionTask
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import Trainer


class ProbeTask(DiffusionTask):
    def __init__(self, *a, guidances: list[float], n: int, log: Path, steps: int, **k) -> None:
        super().__init__(*a, **k)
        self.guidances, self.n, self.log, self.start = guidances, n, log, time.time()
        self.steps = steps

    def evaluate(self, model, step: int) -> dict:
        try:  # the evaluator may still be training beside this probe
            evaluator = load_evaluator()
        except Exception as e:  # noqa: BLE001
            print(f"step {step}: no evaluator yet ({e})", flush=True)
            return {}
        settings = [Setting(g, "ddim", self.steps) for g in self.guidances]
        rows = evaluate_settings(model, settings, n=self.n, evaluator=evaluator, log=lambda s: None)
        out = {f"fid_g{r['guidance']:g}": r["fidelity"] for r in rows}
        out.update({f"fd_g{r['guidance']:g}": r["feature_distance"] for r in rows})
        with open(self.log, "a") as f:
            f.write(json.dumps({"step": step, "elapsed": time.time() - self.start, **out}) + "\n")
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--mult", default="1,2,2")
    p.add_argument("--res", type=int, default=1)
    p.add_argument("--attn", default="8")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--objective", default="epsilon")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--min-snr", type=float, default=0.0)
    p.add_argument("--base-lr-floor", type=float, default=None, help="min_lr (default lr/10)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--guidance", default="0,2,4")
    p.add_argument("--device", default="auto")
    p.add_argument("--labels", choices=("factored", "joint"), default="factored")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of each evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/probe"))
    a = p.parse_args()
    unet = UNetConfig(
        base_channels=a.base,
        channel_mult=tuple(int(c) for c in a.mult.split(",")),
        num_res_blocks=a.res,
        attention_resolutions=tuple(int(c) for c in a.attn.split(",") if c),
    )
    cfg = DiffusionConfig(
        unet=unet,
        conditioning="class",
        prediction_type=a.objective,
        beta_schedule=a.schedule,
        min_snr_gamma=a.min_snr,
        label_factors=(8, 6) if a.labels == "factored" else (),
    )
    torch.manual_seed(0)
    model = DiffusionModel(cfg)
    out = a.out / a.name
    out.mkdir(parents=True, exist_ok=True)
    print(a.name, f"{model.num_params() / 1e6:.2f}M", vars(a), flush=True)
    guidances = [float(g) for g in a.guidance.split(",")]
    log = out / "probe.jsonl"
    task = ProbeTask(model, ImageData("shapes"), guidances=guidances, n=a.n, log=log, steps=a.steps)
    tc = TrainConfig(
        max_iters=a.iters,
        batch_size=a.batch,
        learning_rate=a.lr,
        warmup_iters=100,
        eval_interval=a.eval_every,
        eval_iters=2,
        log_interval=50,
        ema_decay=a.ema,
        weight_decay=0.0,
        device=a.device,
        min_lr=a.base_lr_floor,
        precision=a.precision,
    )
    Trainer(
        task,
        tc,
        out / "run",
        run_config={"model_type": "diffusion", "model": asdict(cfg)},
        progress=False,
    ).fit()
    print((out / "probe.jsonl").read_text(), flush=True)
    metrics = (out / "run" / "metrics.jsonl").read_text().splitlines()
    print("\n".join(m for m in metrics if "val_loss" in m), flush=True)


if __name__ == "__main__":
    main()
