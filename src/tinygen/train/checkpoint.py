"""Trainer checkpoints: the one resumable state file, written atomically, loaded safely.

`trainer_state.pt` holds everything `--resume` needs in ONE file: step, weights, optimiser,
RNG states, best validation loss -- plain tensors and numbers, loaded with
`torch.load(weights_only=True)`, never arbitrary pickles. The run-directory files, atomic
writes, JSON and safetensors weights live on the ground floor, `tinygen.io`; their names are
re-exported here so older imports keep working.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tinygen.errors import TinygenError
from tinygen.io import (  # noqa: F401 - re-exported: the old home of these names
    BEST_FILE,
    CONFIG_FILE,
    EMA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    _tied_names,  # noqa: F401
    atomic_write,
    check_resume_kind,
    check_writable_dir,
    load_weights,
    model_weights_path,
    read_json,
    save_weights,
    state_dict_for_saving,
    write_json,
)


def save_state(state: dict, path: str | Path) -> None:
    """Save the trainer state (tensors, numbers, strings, dicts, lists) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TinygenError(
            f"cannot resume: {path} does not exist (the run never saved a checkpoint); "
            "start without --resume"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, unsupported pickle content
        raise TinygenError(f"cannot resume: {path} is corrupt ({e}); start a new run") from e
