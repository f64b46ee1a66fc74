"""The run's `tokenizer.json`: its one file name, and reading and writing it.

Every tokenizer saves itself as one JSON object with a `"type"` field naming its kind
(`char`, `word`, `minilm`) and whatever else rebuilds it (the characters, the caption
words, the context length). This module is the floor the tokenizers stand on: it knows
the file, not the tokenizers, so each tokenizer module can import it and
`tinygen.data.tokenizer.load_tokenizer` can import them all without a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError
from tinygen.io import read_json, write_json

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TOKENIZER_FILE


def write_tokenizer_file(run_dir: str | Path, data: dict[str, Any]) -> None:
    """Write `data` (a dict with a `"type"`) as the run's tokenizer.json, atomically."""
    if "type" not in data:
        raise ValueError("a tokenizer's saved dict needs a 'type' field")
    write_json(tokenizer_path(run_dir), data)


def read_tokenizer_file(run_dir: str | Path, *, hint: str = "was it trained?") -> dict[str, Any]:
    """The parsed tokenizer.json of a run, checked to be an object with a string `"type"`.

    Raises a TinygenError naming the file when it is missing (with `hint`), is not JSON,
    or has no type -- the three ways a run's tokenizer can be unusable before its kind
    is even known.
    """
    path = tokenizer_path(run_dir)
    if not path.is_file():
        raise TinygenError(f"{path} is missing; the run has no tokenizer ({hint})")
    try:
        data = read_json(path)
    except TinygenError as e:
        raise TinygenError(
            f"{path} is corrupt (not valid JSON: {e.__cause__}); retrain the run"
        ) from e
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise TinygenError(
            f'{path} is corrupt: it has no tokenizer "type" (char, word or minilm); retrain the run'
        )
    return data


def corrupt(path: Path, error: Exception) -> TinygenError:
    """The error for a tokenizer.json whose fields do not rebuild its tokenizer."""
    return TinygenError(f"{path} is corrupt ({type(error).__name__}: {error}); retrain the run")
