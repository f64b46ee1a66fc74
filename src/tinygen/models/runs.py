"""Loading a trained run: its config.json, and its model rebuilt and checked for kind.

`load_model(run, expect="seq2seq")` is the one "load a run and check its model type":
every command that reads a run goes through it, so a run of the wrong kind always gives
the same one-line error, which names the command that trains the kind that was wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinygen import io
from tinygen.errors import TinygenError
from tinygen.models.registry import build_model

# The command that trains each kind of run, for the error that meets a run of another kind.
TRAIN_COMMANDS: dict[str, str] = {
    "gpt": "tinygen train gpt",
    "seq2seq": "tinygen train seq2seq",
    "clip": "tinygen train clip",
    "diffusion": "tinygen train diffusion",
    "noisy-classifier": "tinygen train noisy-classifier",
    "shapes-evaluator": "tinygen train evaluator",
    "lora-adapter": "tinygen finetune gpt",
    "latent-diffusion": "tinygen train latent-diffusion",
    "autoencoder": "tinygen train autoencoder",
}


ADAPTER_TYPES = ("lora-adapter", "hf-lora-adapter")  # adapter runs: weights of no whole model


def load_resumable_config(run_dir: str | Path, model_type: str) -> dict[str, Any]:
    """The config.json of a run that `--resume` is about to continue, checked to be a run of
    the kind the command trains (before any of its files -- tokenizer, vocabularies -- is
    read as if it were): "cannot resume runs/x: it holds a clip run, not a gpt one"."""
    run_dir = Path(run_dir)
    if not (run_dir / io.CONFIG_FILE).is_file():
        raise TinygenError(
            f"cannot resume {run_dir}: it holds no run ({io.CONFIG_FILE} is missing); start "
            "without --resume"
        )
    config = load_run_config(run_dir)
    io.check_resume_kind(run_dir, model_type, config["model_type"])
    return config


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json, checked to be a tinygen run config (model_type + model)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinygenError(f"run directory {run_dir} does not exist; pass --run of a trained run")
    config = io.read_json(run_dir / io.CONFIG_FILE)
    if not isinstance(config, dict) or "model_type" not in config or "model" not in config:
        raise TinygenError(
            f"{run_dir / io.CONFIG_FILE} lacks model_type/model; it is not a tinygen run config"
        )
    return config


def check_model_type(run_dir: str | Path, model_type: str, expect: str | tuple[str, ...]) -> None:
    """Raise the one clear error when a run of `model_type` is not of a kind in `expect`:
    "runs/x holds a gpt model, not a seq2seq one; pass a run trained with `tinygen train
    seq2seq`"."""
    kinds = (expect,) if isinstance(expect, str) else tuple(expect)
    if model_type in kinds:
        return
    if model_type in ADAPTER_TYPES:
        raise TinygenError(
            f"{run_dir} is a LoRA adapter, not a {' or '.join(kinds)} run; pass its base "
            "model's run with --run (or --base) and the adapter with --adapter"
        )
    commands = " or ".join(f"`{TRAIN_COMMANDS.get(k, f'tinygen train {k}')}`" for k in kinds)
    raise TinygenError(
        f"{run_dir} holds a {model_type} model, not a {' or '.join(kinds)} one; "
        f"pass a run trained with {commands}"
    )


def load_model(
    run: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    expect: str | tuple[str, ...] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run from config.json and load its weights (eval mode).

    which: best | last | ema -- `ema` falls back to the last weights when the run has no
    ema.safetensors (it was trained without --ema-decay), `best` to the last when no
    evaluation improved. expect: a model_type (or a tuple of them) the run must be; a run
    of another kind is one TinygenError that names the command training the expected kind.
    Returns (model, the whole config.json).
    """
    config = load_run_config(run)
    if expect is not None:
        check_model_type(run, config["model_type"], expect)
    model = build_model(config["model_type"], config["model"], run=run)
    io.load_weights(model, io.model_weights_path(run, which))
    return model.to(device).eval(), config
