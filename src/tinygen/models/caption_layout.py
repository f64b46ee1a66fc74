"""An auxiliary objective for the text encoder: read the scene's layout from the caption.

Why (docs/benchmarks.md, section glide, "Where binding fails"): GLIDE's text encoder is
trained only through the diffusion loss. After 6,000 steps on the shapes world, a probe of
its features reads each word's colour (100 %) and which phrase a word is in (89 %), but not
which *place* the phrase's object takes -- that needs the relation too ("a red circle to the
right of a blue square" puts red on the right): 50 %, chance. Without that, the U-Net cannot
put the right colour at the right place, and two-object scenes fail on binding.

This head asks the pooled caption feature for the layout the caption describes: for each of
the five places, whether an object is there and, if so, its colour, shape and size (the
scene's `slot_labels`; the same five places the two-object judge uses, but the labels come
from the data generator, not from the judge). A linear layer on the pooled feature, a
cross-entropy per place and attribute, skipped for captions that leave an attribute unsaid
(`known` False). Not in GLIDE: off by default (`TextConditionerConfig.layout_weight = 0`);
it is a training aid only -- sampling never calls it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.data.shapes import IGNORE
from tinygen.data.shapes_prompts import COLORS, POSITIONS, SHAPES, SIZES

LAYOUT_CLASSES = {"occupied": 2, "color": len(COLORS), "shape": len(SHAPES), "size": len(SIZES)}


class CaptionLayoutHead(nn.Module):
    """pooled caption feature (B, width) -> per-place logits {attribute: (B, 5, classes)}."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.places = len(POSITIONS)
        self.proj = nn.Linear(width, self.places * sum(LAYOUT_CLASSES.values()))

    def forward(self, pooled: Tensor) -> dict[str, Tensor]:
        out = self.proj(pooled).view(pooled.shape[0], self.places, -1)
        logits, start = {}, 0
        for name, k in LAYOUT_CLASSES.items():
            logits[name] = out[..., start : start + k]
            start += k
        return logits


def layout_loss(logits: dict[str, Tensor], labels: dict[str, Tensor], known: Tensor) -> Tensor:
    """Mean cross-entropy over places and attributes of the captions with `known` (B,) True.

    labels: "occupied" (B, 5) in {0, 1} and "color"/"shape"/"size" (B, 5), IGNORE where the
    place is empty (`data.shapes.slot_labels`). Each attribute's term is averaged over its
    labelled entries (zero, with a gradient path, when it has none), without a host sync."""
    total = logits["occupied"].new_zeros(())
    for name in LAYOUT_CLASSES:
        target = labels[name].masked_fill(~known[:, None], IGNORE).flatten()
        summed = F.cross_entropy(
            logits[name].flatten(0, 1).float(), target, ignore_index=IGNORE, reduction="sum"
        )
        total = total + summed / (target != IGNORE).sum().clamp(min=1)
    return total / len(LAYOUT_CLASSES)
