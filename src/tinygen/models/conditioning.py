"""Conditioning as data: what a diffusion model is conditioned on, as one dict of tensors.

Every conditional diffusion model of tinygen -- class-conditional, GLIDE (text), unCLIP
(CLIP image embeddings), latent diffusion (text context on latents) -- is the same
`DiffusionModel` with a different condition. A condition is a `Condition`: a dict whose
keys say what it holds,

    labels        (B,) or (B, k)  class labels (the null label included)
    tokens        (B, T) int64    caption token ids, for a text conditioner to encode
    context       (B, S, D)       token features for the U-Net's cross-attention
    context_mask  (B, S) bool     True where `context` holds a real token
    embedding     (B, E)          a vector added to the time embedding (`cond_emb`)
    masked_image  (B, C, H, W)    inpainting: the image with the region to repaint zeroed
    mask          (B, 1, H, W)    inpainting: 1 where to repaint

so that the classifier-free wrapper, the sample loop and the trainer handle all of them
with the same code: they expand, drop and concatenate conditions key by key.

A *conditioner* turns what the user gives (labels, captions, CLIP embeddings) into the
U-Net's inputs and knows its own null condition and how often it is dropped in training
(Ho & Salimans 2022: the same network learns the conditional and the unconditional model).
`LabelConditioner` is the one for class labels, `TextConditioner` (GLIDE's text encoder,
trained with the U-Net) the one for captions; the CLIP-image conditioner follows the same
protocol. A conditioner drops only its own keys: the inpainting input is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.caption_layout import CaptionLayoutHead
from tinygen.nn.transformer import Block


class Condition(TypedDict, total=False):
    """What a diffusion model is conditioned on; every key optional (see the module doc)."""

    labels: Tensor
    tokens: Tensor
    context: Tensor
    context_mask: Tensor
    embedding: Tensor
    masked_image: Tensor
    mask: Tensor


CONDITION_KEYS = tuple(Condition.__annotations__)


def as_condition(cond: Condition | Tensor | None) -> Condition:
    """A Condition from a dict, a bare tensor (class labels, the older calling style) or None."""
    if cond is None:
        return {}
    if isinstance(cond, Tensor):
        return {"labels": cond}
    if not isinstance(cond, dict):
        raise TinygenError(f"a condition is a dict of tensors or a label tensor, got {type(cond)}")
    if unknown := sorted(set(cond) - set(CONDITION_KEYS)):
        raise TinygenError(
            f"unknown condition keys {unknown}; a Condition holds {', '.join(CONDITION_KEYS)}"
        )
    return cond


def expand_condition(cond: Condition, batch_size: int) -> Condition:
    """Broadcast a batch-1 condition (a null condition, say) to `batch_size`."""
    out: Condition = {}
    for key, value in cond.items():
        if value.shape[0] == 1 and batch_size != 1:
            value = value.expand(batch_size, *value.shape[1:])
        out[key] = value
    return out


def drop_condition(cond: Condition, null: Condition, drop: Tensor) -> Condition:
    """Replace the condition of the samples where `drop` (B,) is True by the null condition
    (classifier-free training, Ho & Salimans 2022, Alg. 1). Keys the null condition does not
    have (the inpainting input) are kept as they are."""
    null = expand_condition(null, drop.shape[0])
    out: Condition = {}
    for key, value in cond.items():
        if key not in null:
            out[key] = value
            continue
        mask = drop.to(value.device).view(-1, *([1] * (value.dim() - 1)))
        out[key] = torch.where(mask, null[key].to(value.device, value.dtype), value)
    return out


class Conditioner(Protocol):
    """Turns a Condition into the U-Net's keyword inputs; knows its null and drop rate."""

    drop_prob: float

    def null_condition(self, batch_size: int, device: torch.device | str) -> Condition: ...

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]: ...


class LabelConditioner:
    """Class labels -> rows of the U-Net's class table (ADM's class conditioning).

    The null label is `num_classes` (the last row). With `label_factors` (e.g. (8, 6) for the
    shapes world's (colour, shape) classes) a label is split into its attributes, each with
    its own block of rows whose embeddings the U-Net sums: every colour and every shape
    embedding learns from all the images that show it, and pairs never seen in training
    still get a meaningful condition.
    """

    def __init__(
        self, num_classes: int, *, label_factors: tuple[int, ...] = (), drop_prob: float = 0.1
    ) -> None:
        self.num_classes = num_classes
        self.label_factors = tuple(label_factors)
        self.drop_prob = drop_prob

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def num_rows(self) -> int:
        """Rows of the U-Net's class table: every label (or attribute value) plus the null."""
        return (sum(self.label_factors) if self.label_factors else self.num_classes) + 1

    def __call__(self, labels: Tensor) -> Condition:
        return {"labels": labels}

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> Condition:
        return {"labels": torch.full((batch_size,), self.null_label, device=device)}

    def check(self, labels: Tensor, n: int | None = None) -> None:
        """One label per image, each a real class (the null label is not for users)."""
        if labels.dim() != 1 or (n is not None and labels.shape[0] != n):
            want = f"({n},)" if n is not None else "(B,)"
            raise TinygenError(f"need one label per image {want}, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.null_label):
            raise TinygenError(
                f"labels must be in [0, {self.null_label - 1}], got {sorted(set(labels.tolist()))}"
            )

    def rows(self, labels: Tensor) -> Tensor:
        """Labels (B,) -> the rows of the U-Net's class table: the label itself, or with
        `label_factors` its mixed-radix digits (B, k) (label = ((d0 * f1) + d1) * f2 + ...),
        each offset into its own block of rows; the null label is the last row."""
        factors = self.label_factors
        if not factors:
            return labels
        digits, rest = [], labels
        for factor in reversed(factors):
            digits.append(rest % factor)
            rest = rest // factor
        offsets = torch.tensor([0, *factors[:-1]], device=labels.device).cumsum(0)
        rows = torch.stack(digits[::-1], dim=1) + offsets  # (B, k)
        return torch.where((labels == self.null_label)[:, None], sum(factors), rows)

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]:
        if "labels" not in cond:
            raise TinygenError("this model is class-conditional; the condition needs labels")
        return {"class_labels": self.rows(cond["labels"])}


TEXT_POOLINGS = ("last", "mean")


@dataclass
class TextConditionerConfig:
    """GLIDE's text encoder (Nichol et al. 2021, sec. 2.3 and app. A), at our scale."""

    vocab_size: int = field(default=0, metadata={"help": "caption vocabulary (from the data)"})
    context_length: int = field(
        default=16, metadata={"help": "caption tokens, padded or cut to this", "min": 2}
    )
    width: int = field(default=128, metadata={"help": "width of the text Transformer", "min": 8})
    layers: int = field(default=2, metadata={"help": "text Transformer layers", "min": 1})
    heads: int = field(default=4, metadata={"help": "text Transformer heads", "min": 1})
    drop_prob: float = field(
        default=0.2,
        metadata={"help": "chance of the empty caption in training (CFG)", "min": 0, "below": 1},
    )
    pooling: str = field(
        default="last",
        metadata={
            "help": "the feature added to the time embedding: last (GLIDE's final position) | "
            "mean (over the caption's real tokens)",
            "choices": TEXT_POOLINGS,
        },
    )
    position_std: float = field(
        default=1.0,
        metadata={
            "help": "standard deviation of the learned position embedding at init, beside "
            "the token embedding's 1 (runs trained before this option existed: 0.01)",
            "above": 0,
        },
    )
    layout_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of an auxiliary loss that reads the scene's layout (what is at "
            "each of the five places) from the pooled caption feature; 0 = none, GLIDE's "
            "(models/caption_layout.py)",
            "min": 0,
        },
    )

    def validate(self) -> None:
        check_fields(self)
        if self.vocab_size < 5:
            raise TinygenError(
                f"the text conditioner needs the caption vocabulary size (got {self.vocab_size})"
            )
        if self.width % self.heads:
            raise TinygenError(f"text width {self.width} is not divisible by {self.heads} heads")


class TextConditioner(nn.Module):
    """Caption tokens -> GLIDE's two inputs of the U-Net.

    A bidirectional Transformer (the shared pre-norm `Block`s, no causal mask) over the
    caption's token ids, right-padded with `<pad>` = 0 to `context_length`, plus learned
    positions; trained jointly with the U-Net. Its outputs:
      - `cond_emb`: the feature of the final position (GLIDE's `xf_out[:, -1]`), which the
        U-Net projects and adds to the time embedding -- or (`pooling="mean"`) the mean of the
        features of the caption's real (non-padding) tokens. At our scale the final position
        learns slowly to gather the words (a linear probe of it read shape right for 80% of
        validation captions after a 36-minute run, the mean of its tokens 92.5%;
        docs/benchmarks.md), so the shapes recipe pools by the mean;
      - `context`: the whole token sequence (B, T, width), which every attention block of
        the U-Net projects (per block) and attends to, joined to its keys and values
        (`concat_kv`, GLIDE) or by cross-attention (latent diffusion's way).
    Padding is not masked: as in GLIDE, the `<pad>` embedding is learned, and the *empty
    caption* -- every position `<pad>` -- is the null condition of classifier-free guidance
    (replacing the caption `drop_prob` of the time in training).
    """

    def __init__(self, config: TextConditionerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.drop_prob = c.drop_prob
        self.token_emb = nn.Embedding(c.vocab_size, c.width)
        # positions start at the tokens' scale (nn.Embedding draws N(0, 1)): started 100x
        # smaller, they stayed too faint for the encoder to learn which phrase a word is in,
        # and with it which object a colour belongs to (docs/benchmarks.md, section glide,
        # "Where binding fails")
        self.pos_emb = nn.Parameter(torch.randn(c.context_length, c.width) * c.position_std)
        self.blocks = nn.ModuleList(Block(c.width, c.heads) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        # a training aid only (caption_layout.py); absent, and no weights, when the weight is 0
        self.layout_head = CaptionLayoutHead(c.width) if c.layout_weight > 0 else None

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, T) int64 -> (pooled feature (B, width), token features (B, T, width))."""
        c = self.config
        if tokens.dim() != 2 or tokens.shape[1] != c.context_length:
            raise TinygenError(
                f"caption tokens must be (B, {c.context_length}), got {tuple(tokens.shape)}; "
                "encode captions with the run's tokenizer"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size):
            raise TinygenError(f"caption token ids must be in [0, {c.vocab_size})")
        x = self.token_emb(tokens) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        if c.pooling == "last":
            return x[:, -1], x
        real = (tokens != 0).unsqueeze(-1).to(x.dtype)  # (B, T, 1); <pad> is id 0
        real = torch.where(real.sum(1, keepdim=True) > 0, real, torch.ones_like(real))
        return (x * real).sum(1) / real.sum(1), x  # the empty caption: all positions

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> Condition:
        """The empty caption: every position `<pad>` (id 0)."""
        shape = (batch_size, self.config.context_length)
        return {"tokens": torch.zeros(shape, dtype=torch.long, device=device)}

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]:
        if "tokens" not in cond:
            raise TinygenError("this model is text-conditional; the condition needs tokens")
        pooled, sequence = self(cond["tokens"])
        return {"cond_emb": pooled, "context": sequence}
