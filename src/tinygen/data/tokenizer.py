"""One tokenizer protocol, and `load_tokenizer(run_dir)` for every kind a run can save.

tinygen has three tokenizers, one per kind of text a model reads:
  kind "char"    `CharTokenizer` (data/tokenizers.py): one id per character, for GPT
  kind "word"    `CaptionTokenizer` (data/caption_tokenizer.py): caption words, for CLIP
  kind "minilm"  `MiniLMTokenizer` (data/minilm_tokenizer.py): MiniLM's word pieces, for
                 CLIP with the locked pretrained text tower
Each saves itself as the run's `tokenizer.json`, a JSON object whose `"type"` is its kind,
and `load_tokenizer` reads that field to rebuild the right one, so code that samples from
or evaluates a run needs no knowledge of how it was trained.

The translation vocabularies (`tinygen.data.translation.Vocab`) are not among them: a
seq2seq run stores its two vocabularies inside config.json (`TranslationData.describe`),
not in tokenizer.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tinygen.data.caption_tokenizer import CaptionTokenizer
from tinygen.data.minilm_tokenizer import MiniLMTokenizer
from tinygen.data.tokenizer_file import TOKENIZER_FILE, read_tokenizer_file, tokenizer_path
from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError

__all__ = ["TOKENIZER_FILE", "TOKENIZER_KINDS", "Tokenizer", "load_tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers: its kind (the `"type"` of its tokenizer.json), the
    number of ids, text -> ids and back, and saving into a run directory.

    `isinstance(obj, Tokenizer)` checks that these members exist (not their signatures).
    """

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int] | Tensor) -> str: ...

    def save(self, run_dir: str | Path) -> None: ...


# kind -> how to rebuild it from its saved dict (and the file's path, for errors)
TOKENIZER_KINDS: dict[str, Callable[[dict[str, Any], Path], Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer.from_dict,
    CaptionTokenizer.kind: CaptionTokenizer.from_dict,
    MiniLMTokenizer.kind: MiniLMTokenizer.from_dict,
}


def load_tokenizer(run_dir: str | Path) -> Tokenizer:
    """The tokenizer a run was trained with, whatever its kind.

    Raises a TinygenError naming the file and the fix when tokenizer.json is missing,
    is not JSON, has no `"type"`, names an unknown type, or lacks the fields its type
    needs.
    """
    data = read_tokenizer_file(run_dir)
    path = tokenizer_path(run_dir)
    build = TOKENIZER_KINDS.get(data["type"])
    if build is None:
        raise TinygenError(
            f"{path} has an unknown tokenizer type {data['type']!r} (known: "
            f"{', '.join(sorted(TOKENIZER_KINDS))}); was the run written by a newer tinygen? "
            "Upgrade tinygen or retrain the run"
        )
    return build(data, path)
