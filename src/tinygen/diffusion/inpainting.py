"""Inpainting by replacing the known region at every step of the one sample loop.

Given an image x_0 and a mask m (1 = repaint, 0 = keep), every step of the reverse process
ends with

    x_{t-1} <- m * x_{t-1} + (1 - m) * q(x_{t-1} | x_0),

the known pixels drawn afresh from the forward process at the new noise level (Sohl-Dickstein
et al. 2015, app. C; the "replacement" of SDEdit and RePaint). After the last step the known
region is x_0 itself, exactly. GLIDE's inpainting model (Nichol et al. 2021, sec. 3.3) also
*sees* the masked image and the mask as extra U-Net input channels, so what it paints agrees
with the surroundings; latent diffusion's "blended" inpainting uses only the replacement, on
latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError


def check_mask(mask: Tensor, image: Tensor) -> None:
    """A mask (B, 1, H, W) of 0s and 1s, the image's batch and size, with something to paint."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != image.shape[2:]:
        raise TinygenError(
            f"the mask must be (B, 1, {image.shape[2]}, {image.shape[3]}) to match the image, "
            f"got {tuple(mask.shape)}"
        )
    if not torch.all((mask == 0) | (mask == 1)):
        raise TinygenError("the mask must hold only 0 (keep) and 1 (repaint)")
    if not bool(mask.flatten(1).any(1).all()):
        raise TinygenError("the mask is empty: mark the region to repaint in white")


def known_region_fn(
    image: Tensor,
    mask: Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
) -> Callable[[Tensor, int], Tensor]:
    """A `post_step_fn` for `sampling.sample` that keeps `image` (B, C, H, W) where `mask`
    (B, 1, H, W) is 0: noised to each step's level (fresh noise from `generator`), and exact
    after the last step (t_prev = -1)."""
    check_mask(mask, image)

    def replace(x_prev: Tensor, t_prev: int) -> Tensor:
        known = image.to(x_prev.device, x_prev.dtype)
        m = mask.to(x_prev.device, x_prev.dtype)
        if t_prev >= 0:
            noise = torch.randn(known.shape, generator=generator).to(known)
            known = schedule.add_noise(known, noise, t_prev)
        return m * x_prev + (1 - m) * known

    return replace
