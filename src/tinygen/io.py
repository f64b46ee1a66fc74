"""The ground floor of files: atomic writes, JSON, safetensors weights, run-file names.

A run directory holds:
  config.json         everything needed to rebuild the model (model_type + model config),
                      the training config and the data/tokenizer description
  model.safetensors   the latest weights (EMA weights in ema.safetensors when enabled)
  best.safetensors    the weights with the best validation loss so far
  trainer_state.pt    everything `--resume` needs (written by `tinygen.train.checkpoint`)
  metrics.jsonl       one JSON object per line: step, train_loss / val_loss, lr, ...
  loss.png            the loss curves, drawn at the end of training

Every file is written to a temporary name in the same directory and renamed into place,
so a process killed at any moment (even SIGKILL mid-write) leaves the previous complete
file. Weights are safetensors only: nothing here unpickles a user's file. Every layer of
tinygen (data, models, train, eval, cli) may import this module; it imports only torch,
safetensors and `tinygen.errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinygen.errors import TinygenError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` then rename the temporary file onto `path` atomically.

    The file gets the user's normal permissions (the umask's), not mkstemp's private 0600,
    so a run directory shared with a group or a container stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"{path} does not exist; is this a tinygen run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TinygenError(f"{path} is not valid JSON ({e}); the file is corrupt") from e


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, contiguous, with tied weights stored once (safetensors refuses
    shared storage). `load_weights` restores the ties through `load_state_dict(strict=False)`."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if key in seen and tensor.numel():
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Save weights as safetensors, atomically."""
    tensors = state_dict_for_saving(model)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into `model`, with errors that say what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"no weights at {path}; train a model first or check the path")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TinygenError(f"{path} is not a valid safetensors file ({e}); it is corrupt") from e
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]
    unexpected = [k for k in tensors if k not in expected]
    wrong_shape = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise TinygenError(
            f"{path} does not match the model in its config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong_shape[:3]})"
        )
    model.load_state_dict(tensors, strict=False)


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Names in state_dict that share storage with an earlier name."""
    seen: set[int] = set()
    tied: set[str] = set()
    for name, tensor in model.state_dict().items():
        if not tensor.numel():
            continue
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tied.add(name)
        seen.add(ptr)
    return tied


def model_weights_path(run_dir: str | Path, which: str = "best") -> Path:
    """The weights file to load from a run: `best`, `last` or `ema` (falls back to last)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinygenError(f"run directory {run_dir} does not exist; pass --run of a trained run")
    names = {"best": BEST_FILE, "last": MODEL_FILE, "ema": EMA_FILE}
    if which not in names:
        raise TinygenError(f"unknown checkpoint {which!r}; choose best, last or ema")
    for name in (names[which], MODEL_FILE):
        if (run_dir / name).is_file():
            return run_dir / name
    raise TinygenError(
        f"{run_dir} has no checkpoint ({MODEL_FILE} missing); train it first "
        "(tinygen train ...) or pass the right --run"
    )


def weights_fingerprint(run_dir: str | Path) -> str:
    """sha256 of a run's loaded weights file (best.safetensors, else model.safetensors), with
    its size: what runs built on another run (an embedding cache, a warm start) record. The
    whole file is hashed (a few MB at our scale), not its mtime, so a copied run keeps its
    fingerprint and a retrained one changes it."""
    path = model_weights_path(run_dir, "best")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stat().st_size}-{digest.hexdigest()[:32]}"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """`path` is, or can be made, a directory this process can write: one clear error for a
    regular file on the way, a read-only directory, or a missing-and-uncreatable parent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TinygenError(f"{flag} {path} is a file, not a directory; pass a directory path")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TinygenError(f"{flag} {path}: {existing} is a file; pass a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TinygenError(f"{flag} {path}: {existing} is not writable; pass one you can write")
    return path


def check_output_file(
    path: str | Path, flag: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> Path:
    """An output file named by a user, checked before any work: not a directory, an
    extension from `suffixes` (".png" is added to a name without one), a parent that is or
    can become a writable directory. Returns the path to write."""
    path = Path(path)
    if path.is_dir():
        raise TinygenError(
            f"{flag} {path} is a directory; pass a file name, e.g. {path / ('out' + suffixes[0])}"
        )
    if not path.suffix:
        path = path.with_suffix(suffixes[0])
    elif path.suffix.lower() not in suffixes:
        raise TinygenError(
            f"{flag} {path}: cannot write a {path.suffix} file here; use one of "
            f"{', '.join(suffixes)}"
        )
    check_writable_dir(path.parent, flag)
    return path


def next_free_dir(path: str | Path, marker: str) -> Path:
    """`path` if it holds no `marker` file, else the first of path-2, path-3, ... that does
    not: a second evaluation never replaces the first one's results."""
    path = Path(path)
    candidate, n = path, 1
    while (candidate / marker).exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def check_resume_kind(run_dir: str | Path, model_type: str, saved_type: str | None) -> None:
    """`--resume` continues a run of the same kind only: the one message for a run of
    another kind, whether the command finds out before reading the run's files (models.runs)
    or when the trainer checks its saved config."""
    if saved_type is not None and saved_type != model_type:
        raise TinygenError(
            f"cannot resume {run_dir}: it holds a {saved_type} run, not a {model_type} one; "
            f"pass the --out of a {model_type} run, or drop --resume and choose a new --out"
        )
