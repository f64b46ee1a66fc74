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

so that the classifier-free wrapper, the sample loop and the trainer handle all of them
with the same code: they expand, drop and concatenate conditions key by key.

A *conditioner* turns what the user gives (labels, captions, CLIP embeddings) into the
U-Net's inputs and knows its own null condition and how often it is dropped in training
(Ho & Salimans 2022: the same network learns the conditional and the unconditional model).
`LabelConditioner` is the one for class labels; text and CLIP-image conditioners follow
the same protocol.
"""

from __future__ import annotations

from typing import Protocol, TypedDict

import torch
from torch import Tensor

from tinygen.errors import TinygenError


class Condition(TypedDict, total=False):
    """What a diffusion model is conditioned on; every key optional (see the module doc)."""

    labels: Tensor
    tokens: Tensor
    context: Tensor
    context_mask: Tensor
    embedding: Tensor


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
    (classifier-free training, Ho & Salimans 2022, Alg. 1)."""
    null = expand_condition(null, drop.shape[0])
    out: Condition = {}
    for key, value in cond.items():
        if key not in null:
            raise TinygenError(f"the null condition has no {key!r}; it cannot drop it")
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
