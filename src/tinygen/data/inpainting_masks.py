"""Masks for training and testing inpainting models: 1 = repaint, 0 = keep.

GLIDE's inpainting model (Nichol et al. 2021, sec. 3.3) is trained on random erased
regions; here half of them are rectangles anywhere and half follow an object of the image
(its coverage grown into a box around it), so the model learns both to fill holes and to
replace whole objects -- the edit users ask for ("make that circle a blue star").
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_masks(object_masks: Tensor, margin: int = 2) -> Tensor:
    """The bounding box of each image's first object, grown by `margin` pixels.

    object_masks (N, K, H, W) is the generator's anti-aliased coverage per object
    (`ShapesBatch.masks`); returns (N, 1, H, W) float masks in {0, 1}. A box (not the object's
    own outline) leaves room for a new shape of another outline at the same place."""
    n, _, h, w = object_masks.shape
    covered = object_masks[:, 0] > 0  # (N, H, W)
    rows, cols = covered.any(2), covered.any(1)  # (N, H), (N, W)
    ys, xs = torch.arange(h), torch.arange(w)
    big = 10**6
    top = torch.where(rows, ys, big).amin(1) - margin
    bottom = torch.where(rows, ys, -big).amax(1) + margin
    left = torch.where(cols, xs, big).amin(1) - margin
    right = torch.where(cols, xs, -big).amax(1) + margin
    inside_y = (ys[None] >= top[:, None]) & (ys[None] <= bottom[:, None])  # (N, H)
    inside_x = (xs[None] >= left[:, None]) & (xs[None] <= right[:, None])  # (N, W)
    return (inside_y[:, :, None] & inside_x[:, None, :]).float().unsqueeze(1)


def random_rectangles(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 1, size, size) masks, each one rectangle of sides 25-60% of the image, anywhere."""
    sides = (size * (0.25 + 0.35 * torch.rand(n, 2, generator=generator))).long().clamp(min=1)
    corner = (torch.rand(n, 2, generator=generator) * (size - sides + 1)).long()
    ys = torch.arange(size)
    inside_y = (ys[None] >= corner[:, :1]) & (ys[None] < corner[:, :1] + sides[:, :1])
    inside_x = (ys[None] >= corner[:, 1:]) & (ys[None] < corner[:, 1:] + sides[:, 1:])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float().unsqueeze(1)


def training_masks(object_masks: Tensor, generator: torch.Generator) -> Tensor:
    """Half random rectangles, half boxes around an object: (N, 1, H, W) in {0, 1}."""
    n, _, h, _ = object_masks.shape
    # pick one object per image (two-object scenes: either), moved to slot 0 for box_masks
    pick = torch.randint(object_masks.shape[1], (n,), generator=generator)
    chosen = object_masks[torch.arange(n), pick].unsqueeze(1)
    boxes = box_masks(chosen, margin=int(torch.randint(1, 4, (1,), generator=generator)))
    rects = random_rectangles(n, h, generator)
    use_box = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    return torch.where(use_box, boxes, rects)
