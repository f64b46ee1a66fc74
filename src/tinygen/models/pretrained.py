"""Where published checkpoints come from: a local directory or, only when the user names
one, the Hugging Face Hub; and what is read from it (config.json, the weights).

`resolve_pretrained(name_or_dir)` never downloads for a path: an existing directory is
used as it is, a name that looks like a path but does not exist is an error. Only a Hub
name ("gpt2", "openai/clip-vit-base-patch32") goes to the Hub, through huggingface_hub,
imported here and only then. With no network that is one error naming the model and how
to point at a local copy instead.

Weights are read from safetensors when the directory has them, else from the PyTorch
`pytorch_model.bin` with `torch.load(..., weights_only=True)`, which unpickles tensors
only, never code; sharded checkpoints (`*.index.json`) are read shard by shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError

WEIGHT_FILES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # config, tokenizer, weights


@dataclass
class Checkpoint:
    """A published checkpoint read from disk: its directory, config.json and weights."""

    directory: Path
    config: dict
    state_dict: dict[str, Tensor]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def looks_like_path(name: str) -> bool:
    """A name the user meant as a directory: starts with . / ~, or has more parts than a
    Hub name's owner/model."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_pretrained(name_or_dir: str | Path, *, example: str) -> Path:
    """The local directory of a checkpoint: `name_or_dir` itself when it is a directory,
    else a Hub name downloaded (or found in the Hub cache) by huggingface_hub. `example`
    is a Hub name of the right family, for the error messages."""
    name = str(name_or_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TinygenError(
            f"{name} is a file; pass the directory that holds config.json and the weights"
        )
    if isinstance(name_or_dir, Path) or looks_like_path(name):
        raise TinygenError(
            f"checkpoint directory {name} does not exist; pass a local directory holding "
            f"config.json and the weights, or a Hugging Face Hub name such as {example}"
        )
    return _download(name)


def _download(name: str) -> Path:
    """Fetch the config, tokenizer and safetensors weights of Hub model `name` (the
    PyTorch bin only when it has no safetensors), or say how to work offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise TinygenError(
            f"{name!r} is not a local directory, and downloading it needs huggingface_hub: "
            "pip install 'tinygen[hf]', or pass a local checkpoint directory"
        ) from e
    try:
        directory = Path(snapshot_download(name, allow_patterns=HUB_FILES))
        if weight_files(directory) is None:
            directory = Path(snapshot_download(name, allow_patterns=["pytorch_model*.bin*"]))
    except Exception as e:  # offline, unknown repo, gated, bad name: one message
        raise TinygenError(
            f"cannot get {name!r}: it is no local directory, and downloading it from the "
            f"Hugging Face Hub failed ({_one_line(e)}); without network, copy the model "
            f"here first (`huggingface-cli download {name} --local-dir DIR` on a machine "
            "with network) and pass that directory instead of the name"
        ) from e
    return directory


def read_config(directory: Path, *, model_types: tuple[str, ...], family: str, example: str):
    """config.json of a checkpoint directory, checked to be of one of `model_types`: a
    Llama checkpoint given to the CLIP loader is one clear error."""
    path = directory / "config.json"
    if not path.is_file():
        raise TinygenError(
            f"{directory} has no config.json, so it is no transformers checkpoint; pass the "
            f"directory of a {family} checkpoint (e.g. `huggingface-cli download {example} "
            "--local-dir DIR`)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinygenError(f"{path} is not valid JSON ({_one_line(e)}); the file is corrupt") from e
    if not isinstance(config, dict):
        raise TinygenError(f"{path} is not a JSON object; the file is corrupt")
    kind = config.get("model_type")
    if kind not in model_types:
        raise TinygenError(
            f"{directory} holds a {kind or 'untyped'} checkpoint (config.json model_type), "
            f"not a {family} one ({' / '.join(model_types)}); pass a {family} checkpoint "
            f"such as {example}"
        )
    return config


def weight_files(directory: Path) -> list[Path] | None:
    """The weight files of a checkpoint, safetensors first; None when it has none."""
    for single, index in WEIGHT_FILES:
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            try:
                shards = json.loads((directory / index).read_text())["weight_map"].values()
            except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
                raise TinygenError(
                    f"{directory / index} is no valid shard index ({_one_line(e)}); it is "
                    "corrupt, download the checkpoint again"
                ) from e
            return [directory / s for s in sorted(set(shards))]
    return None


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint's weights, on the CPU, in the file's dtype."""
    files = weight_files(directory)
    if files is None:
        names = ", ".join(single for single, _ in WEIGHT_FILES)
        raise TinygenError(f"{directory} has no weights ({names}); the download is incomplete")
    tensors: dict[str, Tensor] = {}
    for path in files:
        tensors.update(_read_weight_file(path))
    return tensors


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise TinygenError(f"{path} is missing; the checkpoint is incomplete, download it again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to parse is a corrupt file
        raise TinygenError(
            f"cannot read the weights {path} ({_one_line(e)}); the file is corrupt or not a "
            "checkpoint, download it again"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TinygenError(f"{path} holds no state dict of tensors; it is no model checkpoint")
    return state


def load_checkpoint(
    name_or_dir: str | Path, *, model_types: tuple[str, ...], family: str, example: str
) -> Checkpoint:
    """Resolve, check the kind of, and read a checkpoint (config first: a wrong kind is
    refused before any weights are read)."""
    directory = resolve_pretrained(name_or_dir, example=example)
    config = read_config(directory, model_types=model_types, family=family, example=example)
    return Checkpoint(directory, config, read_state_dict(directory))
