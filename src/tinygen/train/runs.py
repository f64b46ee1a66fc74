"""Loading a trained run: its config.json, its model and (for text models) its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinygen.errors import TinygenError
from tinygen.models.registry import build_model
from tinygen.train import checkpoint as ckpt


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinygenError(f"run directory {run_dir} does not exist; pass --run of a trained run")
    config = ckpt.read_json(run_dir / ckpt.CONFIG_FILE)
    if "model_type" not in config or "model" not in config:
        raise TinygenError(
            f"{run_dir / ckpt.CONFIG_FILE} lacks model_type/model; it is not a tinygen run config"
        )
    return config


def load_model(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run from config.json and load its weights (eval mode)."""
    config = load_run_config(run_dir)
    model = build_model(config["model_type"], config["model"])
    ckpt.load_weights(model, ckpt.model_weights_path(run_dir, which))
    return model.to(device).eval(), config
