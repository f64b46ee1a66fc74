"""A word-level tokenizer for captions, as CLIP's text tower reads them.

The vocabulary is built from the training captions: every distinct lower-cased word and
punctuation mark, after four special tokens. Keeping colour and shape words as separate
tokens is what lets the text tower compose them ("red" + "star") for combinations it never
saw together. A word outside the vocabulary becomes `<unk>` with a warning, never a crash.

A caption is encoded as `<sot> w1 ... wn <eot>` and right-padded with `<pad>` (id 0) to the
context length, so the text tower can pool at the `<eot>` position (Radford et al. 2021,
sec. 2.4) and the padding, which comes after it under a causal mask, never affects it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tinygen.data.minilm_tokenizer import MiniLMTokenizer
from tinygen.data.tokenizer_file import (
    TOKENIZER_FILE,
    corrupt,
    read_tokenizer_file,
    tokenizer_path,
    write_tokenizer_file,
)
from tinygen.errors import TinygenError

__all__ = [
    "EOT",
    "EOT_ID",
    "PAD",
    "PAD_ID",
    "SOT",
    "SOT_ID",
    "SPECIALS",
    "TOKENIZER_FILE",
    "UNK",
    "UNK_ID",
    "CaptionTokenizer",
    "load_caption_tokenizer",
    "split_words",
]

PAD, SOT, EOT, UNK = "<pad>", "<sot>", "<eot>", "<unk>"
SPECIALS = (PAD, SOT, EOT, UNK)
PAD_ID, SOT_ID, EOT_ID, UNK_ID = range(4)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks: "Small blue square, top." ->
    ['small', 'blue', 'square', ',', 'top', '.']."""
    return _WORD.findall(text.lower())


class CaptionTokenizer:
    """Words to ids: the specials first (`<pad>` = 0), then the words in sorted order.
    Satisfies `tinygen.data.tokenizer.Tokenizer` (kind "word")."""

    kind = "word"

    def __init__(self, words: Iterable[str], *, context_length: int = 16) -> None:
        words = sorted(set(words) - set(SPECIALS))
        if not words:
            raise TinygenError(
                "cannot build a caption vocabulary: the training captions contain no words; "
                "check the caption files of the dataset"
            )
        if context_length < 3:
            raise TinygenError(f"context_length must be at least 3, got {context_length}")
        self.words = list(SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.context_length = context_length

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], *, context_length: int | None = None
    ) -> CaptionTokenizer:
        """Build the vocabulary from training captions. Without `context_length`, it is
        the longest caption plus `<sot>`/`<eot>`."""
        words: set[str] = set()
        longest = 0
        for caption in captions:
            split = split_words(caption)
            words.update(split)
            longest = max(longest, len(split))
        return cls(words, context_length=context_length or longest + 2)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> list[int]:
        """`<sot>` + word ids + `<eot>`, cut to the context length (keeping `<eot>`)."""
        split = split_words(text)
        unknown = sorted({w for w in split if w not in self.stoi})
        if unknown:
            warnings.warn(
                f"caption words not in the vocabulary, read as {UNK}: "
                f"{', '.join(repr(w) for w in unknown[:10])} (the vocabulary has "
                f"{self.vocab_size} words from the training captions)",
                stacklevel=2,
            )
        ids = [self.stoi.get(w, UNK_ID) for w in split][: self.context_length - 2]
        return [SOT_ID, *ids, EOT_ID]

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """(N, context_length) int64 ids, right-padded with `<pad>` = 0."""
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Words back from ids, without the specials."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join(self.words[i] for i in ids if i not in (PAD_ID, SOT_ID, EOT_ID))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "words": self.words[len(SPECIALS) :],
            "context_length": self.context_length,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> CaptionTokenizer:
        """Rebuild from `to_dict()`'s output; `path` names the file in the error."""
        try:
            words = data["words"]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise TypeError("'words' is not a list of strings")
            return cls(words, context_length=int(data["context_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(path or Path(TOKENIZER_FILE), e) from e

    def save(self, run_dir: str | Path) -> None:
        write_tokenizer_file(run_dir, self.to_dict())


def load_caption_tokenizer(run_dir: str | Path) -> CaptionTokenizer | MiniLMTokenizer:
    """The tokenizer a CLIP run was trained with: a `CaptionTokenizer`, or the MiniLM
    word-piece tokenizer when the run used `--text-tower minilm`. (`load_tokenizer` in
    `tinygen.data.tokenizer` loads any kind; this one refuses a GPT's char tokenizer.)"""
    data = read_tokenizer_file(run_dir, hint="was it trained with `tinygen train clip`?")
    path = tokenizer_path(run_dir)
    if data["type"] == CaptionTokenizer.kind:
        return CaptionTokenizer.from_dict(data, path)
    if data["type"] == MiniLMTokenizer.kind:
        return MiniLMTokenizer.from_dict(data, path)
    raise TinygenError(
        f"{path} holds a {data['type']!r} tokenizer, not a caption tokenizer (word or "
        "minilm); pass the run of a CLIP model"
    )
