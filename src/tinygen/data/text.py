"""Character-level language-model data: encode a corpus once, draw random windows.

`TextTask` is what the shared Trainer needs to train a GPT (or fine-tune one): random
windows of `block_size + 1` tokens, inputs are the first `block_size`, targets the last.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tinygen.data.tokenizers import CharTokenizer
from tinygen.errors import TinygenError


def encode_corpus(text: str, tokenizer: CharTokenizer) -> Tensor:
    """Encode a whole corpus to a 1-D int64 tensor, vectorised through a lookup table
    (a Python loop over a megabyte of characters would take a second)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(
        max(max(map(ord, tokenizer.chars)), int(codes.max(initial=0))) + 1, -1, dtype=np.int64
    )
    for i, ch in enumerate(tokenizer.chars):
        table[ord(ch)] = i
    ids = table[codes]
    if (ids < 0).any():
        tokenizer.encode(text)  # raises the error that names the unknown characters
    return torch.from_numpy(ids)


class TextTask:
    """Next-character prediction on random windows of a tokenised corpus."""

    items_name = "tokens"

    def __init__(self, model: nn.Module, train_ids: Tensor, val_ids: Tensor, block_size: int):
        for split, ids in (("training", train_ids), ("validation", val_ids)):
            if len(ids) <= block_size + 1:
                raise TinygenError(
                    f"the {split} text has {len(ids)} characters, fewer than block_size + 2 = "
                    f"{block_size + 2}; use a longer corpus or a smaller --block-size"
                )
        self.model = model
        self.data = {"train": train_ids, "val": val_ids}
        self.block_size = block_size
        self.items_per_sample = block_size
        self._offsets = torch.arange(block_size + 1)

    def get_batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        data = self.data[split]
        starts = torch.randint(len(data) - self.block_size - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + self._offsets]  # (B, block_size + 1)
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return model(x, y)[1]
