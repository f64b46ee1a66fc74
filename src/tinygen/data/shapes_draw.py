"""Vectorised, anti-aliased drawing of the captioned-shapes world.

Every pixel is split into `supersample` x `supersample` subsamples; a subsample is inside
a shape when its centre passes the shape's inside test, and a pixel's coverage is the
fraction of its subsamples that are inside (box-filter anti-aliasing). All images of one
shape are tested at once as tensors, so drawing has no Python loop over pixels or images
(only over the six shape kinds and over chunks that bound memory).

Coordinates: the image spans [0, 1] x [0, 1] with y pointing down. A shape of centre
(cx, cy) and radius r is tested in its local frame u = (x - cx) / r, v = (y - cy) / r,
where every shape fits in the unit disc. `draw_shape_reference` is the slow, obvious twin
(a Python loop over pixels and subsamples) that the tests hold equal to `coverage`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "cross", "star")

STAR_OUTER = 1.05  # radius of the star's points
STAR_INNER = 0.45  # radius of the notches between points
CROSS_ARM = 0.3  # half-thickness of the cross's arms
CROSS_LENGTH = 0.95
SQUARE_HALF = 0.85
DIAMOND_RADIUS = 1.05
TRIANGLE_BASE = 0.7  # v of the base; the apex is at v = -1, the base half-width is 1
SHAPE_EXTENT = 1.25  # every shape lies in the disc of this radius (square corner: 1.21)


def inside(kind: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean mask of the local points (u, v) inside a unit shape of kind `kind`."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return torch.maximum(u.abs(), v.abs()) <= SQUARE_HALF
    if kind == "diamond":
        return u.abs() + v.abs() <= DIAMOND_RADIUS
    if kind == "triangle":  # apex up at (0, -1), flat base at v = TRIANGLE_BASE
        return (v <= TRIANGLE_BASE) & (u.abs() <= (v + 1.0) / (TRIANGLE_BASE + 1.0))
    if kind == "cross":
        au, av = u.abs(), v.abs()
        return ((au <= CROSS_ARM) & (av <= CROSS_LENGTH)) | (
            (av <= CROSS_ARM) & (au <= CROSS_LENGTH)
        )
    if kind == "star":
        return _inside_star(u, v)
    raise ValueError(f"unknown shape kind {kind!r}")


def _inside_star(u: Tensor, v: Tensor) -> Tensor:
    """A five-pointed star, one point straight up. Fold the point into the wedge around
    the nearest star point, where the star is the side of the straight edge from the point
    (STAR_OUTER, 0) to the notch (STAR_INNER at 36 degrees) that holds the centre. The
    folded coordinates need no trigonometry: px is the largest projection on the five
    point directions (that of the nearest point) and py = sqrt(rho^2 - px^2)."""
    sector = 2 * math.pi / 5
    px = None
    for k in range(5):  # point directions (sin, -cos) of k * 72 degrees, 0 = up
        proj = u * math.sin(k * sector) - v * math.cos(k * sector)
        px = proj if px is None else torch.maximum(px, proj)
    py = torch.sqrt(torch.clamp(u * u + v * v - px * px, min=0.0))
    ax = STAR_OUTER
    bx, by = STAR_INNER * math.cos(sector / 2), STAR_INNER * math.sin(sector / 2)
    # cross((B - A), (P - A)) >= 0 on the centre's side of the edge
    return (bx - ax) * py - by * (px - ax) >= 0


def coverage(
    kind: str, centres: Tensor, radii: Tensor, image_size: int, supersample: int = 4
) -> Tensor:
    """Anti-aliased coverage in [0, 1] of `kind` shapes: centres (n, 2) as (x, y) in [0, 1],
    radii (n,) in image widths -> (n, image_size, image_size).

    Only a square window of pixels around each shape is tested (every shape fits in a
    disc of radius SHAPE_EXTENT * r), then pasted into a zero canvas: the work is
    proportional to the shapes' area, not the image's."""
    n, size = centres.shape[0], image_size
    if n == 0:
        return torch.zeros(0, size, size)
    extent = SHAPE_EXTENT * float(radii.max())
    window = math.ceil(2 * extent * size) + 2  # pixels
    origin = torch.floor((centres - extent) * size).long()  # (n, 2) top-left pixel (x, y)
    steps = (torch.arange(window * supersample, dtype=torch.float32) + 0.5) / supersample
    xs = (origin[:, 0:1] + steps) / size  # (n, window * ss) subsample centres in [0, 1]
    ys = (origin[:, 1:2] + steps) / size
    r = radii.view(-1, 1, 1)
    u = (xs.unsqueeze(1) - centres[:, 0].view(-1, 1, 1)) / r  # (n, 1, fine)
    v = (ys.unsqueeze(2) - centres[:, 1].view(-1, 1, 1)) / r  # (n, fine, 1)
    u, v = torch.broadcast_tensors(u, v)  # (n, fine, fine)
    hit = inside(kind, u, v).float().unsqueeze(1)
    patch = F.avg_pool2d(hit, supersample).squeeze(1)  # (n, window, window)
    # paste into a canvas padded by `window` on every side, so no index leaves it
    padded = size + 2 * window
    offsets = torch.arange(window)
    rows = (origin[:, 1:2] + window + offsets).unsqueeze(2)  # (n, window, 1)
    cols = (origin[:, 0:1] + window + offsets).unsqueeze(1)  # (n, 1, window)
    flat = (rows * padded + cols).view(n, -1)
    canvas = torch.zeros(n, padded * padded).scatter_(1, flat, patch.reshape(n, -1))
    canvas = canvas.view(n, padded, padded)
    return canvas[:, window : window + size, window : window + size]


def draw_shape_reference(
    kind: str, centre: tuple[float, float], radius: float, image_size: int, supersample: int = 4
) -> Tensor:
    """The slow twin of `coverage` for one shape: a loop over pixels and subsamples."""
    out = torch.zeros(image_size, image_size)
    fine = image_size * supersample
    for row in range(image_size):
        for col in range(image_size):
            hits = 0
            for sy in range(supersample):
                for sx in range(supersample):
                    x = (col * supersample + sx + 0.5) / fine
                    y = (row * supersample + sy + 0.5) / fine
                    u = torch.tensor((x - centre[0]) / radius, dtype=torch.float32)
                    v = torch.tensor((y - centre[1]) / radius, dtype=torch.float32)
                    hits += int(inside(kind, u, v))
            out[row, col] = hits / supersample**2
    return out


def hsv_to_rgb(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """HSV -> RGB for tensors of the same shape; hue in degrees, s and v in [0, 1].
    Returns (..., 3) in [0, 1] (the standard piecewise-linear hexcone formula)."""
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + hue / 60.0, 6.0)
        ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(value - value * saturation * ramp)
    return torch.stack(channels, dim=-1)


def render(
    kinds: Tensor,
    centres: Tensor,
    radii: Tensor,
    colours: Tensor,
    background: Tensor,
    image_size: int,
    *,
    supersample: int = 4,
    chunk: int = 512,
) -> tuple[Tensor, Tensor]:
    """Paint objects over plain backgrounds, first object first.

    kinds (N, K) index into SHAPE_KINDS, centres (N, K, 2), radii (N, K), colours (N, K, 3)
    and background (N, 3) in [0, 1]. Returns images (N, 3, S, S) in [-1, 1] and coverage
    masks (N, K, S, S) in [0, 1].
    """
    n, k = kinds.shape
    masks = torch.zeros(n, k, image_size, image_size)
    for obj in range(k):
        for kind_id, kind in enumerate(SHAPE_KINDS):
            idx = (kinds[:, obj] == kind_id).nonzero().flatten()
            idx = idx[radii[idx, obj].argsort()]  # similar sizes share a window size
            for part in idx.split(chunk):
                masks[part, obj] = coverage(
                    kind, centres[part, obj], radii[part, obj], image_size, supersample
                )
    images = background.view(n, 3, 1, 1).expand(n, 3, image_size, image_size).clone()
    for obj in range(k):
        alpha = masks[:, obj].unsqueeze(1)  # (N, 1, S, S)
        images = images * (1 - alpha) + colours[:, obj].view(n, 3, 1, 1) * alpha
    return images * 2 - 1, masks
