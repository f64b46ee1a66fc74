"""The character tokenizer: one id per distinct character of the training text.

Its vocabulary is saved next to the model (`tokenizer.json` in the run directory), so a
run samples with exactly the characters it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinygen.data.tokenizer_file import (
    TOKENIZER_FILE,
    corrupt,
    read_tokenizer_file,
    tokenizer_path,
    write_tokenizer_file,
)
from tinygen.errors import TinygenError

__all__ = ["TOKENIZER_FILE", "CharTokenizer"]


class CharTokenizer:
    """Maps characters to ids in sorted order of the characters (nanoGPT's convention).
    Satisfies `tinygen.data.tokenizer.Tokenizer` (kind "char")."""

    kind = "char"

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

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> CharTokenizer:
        """Rebuild from `to_dict()`'s output; `path` names the file in the error."""
        try:
            chars = data["chars"]
            if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
                raise TypeError("'chars' is not a list of strings")
            return cls(chars)
        except (KeyError, TypeError) as e:
            raise corrupt(path or Path(TOKENIZER_FILE), e) from e

    def save(self, run_dir: str | Path) -> None:
        write_tokenizer_file(run_dir, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | Path) -> CharTokenizer:
        """The char tokenizer of a GPT run (`load_tokenizer` loads any kind)."""
        data = read_tokenizer_file(run_dir)
        if data["type"] != cls.kind:
            raise TinygenError(
                f"{tokenizer_path(run_dir)} holds a {data['type']!r} tokenizer, not a character "
                "tokenizer; pass the run of a character-level model (or use load_tokenizer)"
            )
        return cls.from_dict(data, tokenizer_path(run_dir))
