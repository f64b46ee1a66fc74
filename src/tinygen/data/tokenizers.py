"""The character tokenizer: one id per distinct character of the training text.

Its vocabulary is saved next to the model (`tokenizer.json` in the run directory), so a
run samples with exactly the characters it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tinygen.errors import TinygenError

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """Maps characters to ids in sorted order of the characters (nanoGPT's convention)."""

    def __init__(self, chars: list[str] | str) -> None:
        chars = sorted(set(chars))
        if not chars:
            raise TinygenError("cannot build a vocabulary from empty text; the corpus is empty")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise TinygenError(
                f"text contains characters not in the vocabulary: {shown} (the vocabulary has "
                f"{self.vocab_size} characters; remove them or train on a corpus that has them)"
            )
        return [self.stoi[c] for c in text]

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def save(self, run_dir: str | Path) -> None:
        from tinygen.train.checkpoint import write_json

        write_json(Path(run_dir) / TOKENIZER_FILE, {"type": "char", "chars": self.chars})

    @classmethod
    def load(cls, run_dir: str | Path) -> CharTokenizer:
        path = Path(run_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise TinygenError(f"{path} is missing; the run has no tokenizer (was it trained?)")
        try:
            data = json.loads(path.read_text())
            return cls(data["chars"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TinygenError(f"{path} is corrupt ({e}); retrain the run") from e
