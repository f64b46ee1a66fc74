"""unCLIP's decoder condition: a CLIP image embedding (and optionally the caption) -> the U-Net.

DALL-E 2 (Ramesh et al. 2022, sec. 2.1) conditions a GLIDE-like decoder on a CLIP image
embedding in two ways at once, both built here:
  - the embedding is projected and added to the timestep embedding (`cond_emb`: the U-Net
    projects it once more into its time-embedding width, from a zero start);
  - it is projected into four extra tokens of context (`context`), which every attention
    block of the U-Net attends to (concat-kv, GLIDE's way, or cross-attention),
and optionally the caption, encoded by GLIDE's text Transformer (`TextConditioner`): its
pooled feature joins `cond_emb` and its tokens follow the four CLIP tokens in the context.

The embedding enters L2-normalised and multiplied by sqrt(D) -- the scale unCLIP's prior
works in (`models/prior.py`), where its entries have roughly unit variance -- so the
projections start at the usual activation scale. Classifier-free guidance (paper sec. 2.1):
in training the CLIP embedding is set to zero 10% of the time and the caption dropped 50% of
the time, independently (`drop_masks`); the null condition is the zero embedding and the
empty caption together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.conditioning import Condition, TextConditioner, TextConditionerConfig


@dataclass
class ClipImageConditionerConfig:
    """How the decoder reads a CLIP image embedding (Ramesh et al. 2022, sec. 2.1)."""

    embed_dim: int = field(default=0, metadata={"help": "CLIP embedding width (from the run)"})
    width: int = field(
        default=128, metadata={"help": "width of the projected vector and tokens", "min": 8}
    )
    num_tokens: int = field(
        default=4, metadata={"help": "extra context tokens projected from the embedding", "min": 1}
    )
    drop_prob: float = field(
        default=0.1,
        metadata={"help": "chance of the zero embedding in training (CFG)", "min": 0, "below": 1},
    )
    captions: bool = field(
        default=False, metadata={"help": "also condition on the caption (GLIDE's text encoder)"}
    )
    caption_drop_prob: float = field(
        default=0.5,
        metadata={"help": "chance of the empty caption in training", "min": 0, "max": 1},
    )
    text: TextConditionerConfig = field(
        default_factory=lambda: TextConditionerConfig(pooling="mean"),
        metadata={"help": "the caption encoder when captions=True"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.text, dict):
            self.text = TextConditionerConfig(**self.text)

    def validate(self) -> None:
        check_fields(self)
        if self.embed_dim < 1:
            raise TinygenError(
                "the CLIP-image conditioner needs the CLIP run's embedding width (embed_dim); "
                "train an unCLIP decoder with `tinygen train unclip-decoder --clip RUN`"
            )
        if self.captions:
            self.text.validate()
            if self.text.width != self.width:
                raise TinygenError(
                    f"the caption encoder's width {self.text.width} must equal the CLIP "
                    f"tokens' width {self.width} (they share one context)"
                )


def scale_embedding(embedding: Tensor) -> Tensor:
    """(B, D) -> L2-normalised times sqrt(D): entries of roughly unit variance. The zero
    vector (the null condition) stays zero."""
    return F.normalize(embedding.float(), dim=-1) * math.sqrt(embedding.shape[-1])


class ClipImageConditioner(nn.Module):
    """A Condition with `embedding` (B, D) (and `tokens` with captions) -> cond_emb, context."""

    def __init__(self, config: ClipImageConditionerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.drop_prob = c.drop_prob
        self.to_vector = nn.Linear(c.embed_dim, c.width)
        self.to_tokens = nn.Linear(c.embed_dim, c.num_tokens * c.width)
        self.text = TextConditioner(c.text) if c.captions else None

    @property
    def keys(self) -> tuple[str, ...]:
        return ("embedding", "tokens") if self.text is not None else ("embedding",)

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> Condition:
        """The zero embedding (and the empty caption)."""
        null: Condition = {
            "embedding": torch.zeros(batch_size, self.config.embed_dim, device=device)
        }
        if self.text is not None:
            null.update(self.text.null_condition(batch_size, device))
        return null

    def drop_masks(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Which samples lose their embedding (p = drop_prob) and, independently, their
        caption (p = caption_drop_prob): key -> (B,) bool."""
        masks = {"embedding": torch.rand(batch_size, generator=generator) < self.drop_prob}
        if self.text is not None:
            rate = self.config.caption_drop_prob
            masks["tokens"] = torch.rand(batch_size, generator=generator) < rate
        return masks

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]:
        if "embedding" not in cond:
            raise TinygenError(
                "this decoder is conditioned on CLIP image embeddings; the condition needs "
                "`embedding` (B, D)"
            )
        embedding = cond["embedding"]
        c = self.config
        if embedding.dim() != 2 or embedding.shape[1] != c.embed_dim:
            raise TinygenError(
                f"CLIP embeddings must be (B, {c.embed_dim}), got {tuple(embedding.shape)}; "
                "use the CLIP run this decoder was trained with"
            )
        x = scale_embedding(embedding).to(self.to_vector.weight.dtype)
        vector = self.to_vector(x)  # (B, width)
        context = self.to_tokens(x).view(x.shape[0], c.num_tokens, c.width)  # (B, 4, width)
        if self.text is not None:
            if "tokens" not in cond:
                raise TinygenError(
                    "this decoder also reads the caption; the condition needs tokens"
                )
            pooled, sequence = self.text(cond["tokens"])
            vector = vector + pooled
            context = torch.cat([context, sequence.to(context.dtype)], dim=1)  # (B, 4 + T, width)
        return {"cond_emb": vector, "context": context}
