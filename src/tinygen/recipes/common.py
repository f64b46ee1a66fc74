"""What every recipe shares: the named-preset format and the one place that builds the
`Trainer` (minGPT's projects put each task beside, not inside, the model package).

A family's recipe file (`recipes/gpt.py`, `recipes/clip.py`, ...) holds its Trainer task,
its evaluation hooks and pictures, and `PRESETS: dict[str, Preset]`; it trains through
`fit(...)`, so seeding, the announcement, resume and Ctrl-C behave the same everywhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinygen.train.config import TrainConfig
from tinygen.train.trainer import Task, Trainer, TrainResult


@dataclass(frozen=True)
class Preset:
    """A named recipe: the family's model config, the training run, and family-specific
    defaults in `extras` (a data source, a noise schedule) that flags may override."""

    model: Any
    train: TrainConfig
    description: str = ""
    extras: dict = field(default_factory=dict)


def is_main_process() -> bool:
    """Rank 0 under torchrun (and the only process otherwise): the one that talks."""
    return os.environ.get("RANK", "0") == "0"


def parameter_count(model: torch.nn.Module) -> str:
    """The size of `model` as "0.80M parameters", or "0.26M trainable of 0.80M parameters".
    A model's own `num_params()` is its total where it has one (GPT's leaves out the
    position embeddings, as nanoGPT reports)."""
    every = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    num_params = getattr(model, "num_params", None)
    total = num_params() if callable(num_params) else every
    if trainable == every:
        return f"{total / 1e6:.2f}M parameters"
    return f"{trainable / 1e6:.2f}M trainable of {total / 1e6:.2f}M parameters"


def fit(
    task: Task,
    train_config: TrainConfig,
    out: str | Path,
    run_config: dict,
    *,
    resume: bool = False,
    progress: bool = True,
    announce: bool | str = True,
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train `task.model` into the run directory `out` with the shared Trainer.

    run_config: what config.json records beside the training config (model_type, the model
    config, the data). resume: continue `out` from its checkpoint; the trainer refuses a
    changed model config and names the fields that differ. announce: print
    "<model_type> with X.XXM parameters -> out" on rank 0 (a string is added after the
    count: ", vocabulary 65"). on_start(out): called on rank 0 once the run directory is
    ready and before the first step (a tokenizer saves itself there).
    """
    out = Path(out)
    torch.manual_seed(train_config.seed)
    trainer = Trainer(
        task, train_config, out, run_config=run_config, resume=resume, progress=progress
    )
    if trainer.dist.is_main:
        if on_start is not None:
            on_start(out)
        if announce:
            detail = announce if isinstance(announce, str) else ""
            kind = run_config.get("model_type", "model")
            # an adapter's TrainableView counts against the whole model it runs
            model = getattr(task.model, "full_model", task.model)
            print(f"{kind} with {parameter_count(model)}{detail} -> {out}", file=sys.stderr)
    return trainer.fit()


def interrupted(result: Any, out: Any) -> bool:
    """Tell the user how to continue a run stopped by Ctrl-C (its checkpoint is saved).

    Under torchrun every rank is interrupted but only rank 0 saves, so only rank 0 says so.
    """
    if result.interrupted and is_main_process():
        print(
            f"interrupted at step {result.step}; checkpoint saved in {out}. Continue with the "
            "same command plus --resume",
            file=sys.stderr,
        )
    return bool(result.interrupted)
