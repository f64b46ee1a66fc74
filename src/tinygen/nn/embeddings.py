"""Position and timestep embeddings shared by the models."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(
    positions: Tensor,
    dim: int,
    max_period: float = 10000.0,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 0.0,
) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, sec. 3.5) of positions or timesteps.

    positions: (N,) int or float. Returns (N, dim): sines in the first half, cosines in
    the second (the layout of diffusers' `get_timestep_embedding` with flip_sin_to_cos=False).
    The frequencies are max_period^(-i / (dim/2 - freq_shift)), i = 0..dim/2 - 1.

    The two keywords are the published variants: `flip_sin_to_cos=True` puts the cosines
    first and `freq_shift` (diffusers' `downscale_freq_shift`) shifts the frequency
    divisor; Stable Diffusion's U-Net uses (True, 0), DDPM's original code (False, 1).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=positions.device)
        / (half - freq_shift)
    )
    angles = positions.float()[:, None] * freqs[None, :]  # (N, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def sinusoidal_embedding_2d(side: int, dim: int) -> Tensor:
    """(side * side, dim) row-major grid embedding: the row's sinusoidal embedding in the
    first dim // 2 channels, the column's in the rest (the 2-D form of Vaswani et al.'s)."""
    grid = torch.arange(side)
    rows = sinusoidal_embedding(grid, dim // 2, max_period=100.0)  # (side, dim // 2)
    cols = sinusoidal_embedding(grid, dim - dim // 2, max_period=100.0)
    return torch.cat(
        [rows[:, None].expand(side, side, -1), cols[None, :].expand(side, side, -1)], dim=-1
    ).reshape(side * side, dim)


class PatchEmbedding(nn.Module):
    """Split an image into non-overlapping patches and project each to `dim` (ViT)."""

    def __init__(
        self, *, image_size: int, patch_size: int, in_channels: int, dim: int, bias: bool = True
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} not divisible by patch_size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(
            in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias
        )  # OpenAI's CLIP ViT has no bias here

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
