"""The residual, attention and resampling blocks of convolutional diffusion networks.

Shared by the U-Net (`tinygen.nn.unet`), its encoder half (the noisy classifier of
classifier guidance) and, soon, the autoencoder of latent diffusion, so each exists once:

- `ResBlock`: GroupNorm -> SiLU -> conv, an embedding (time, plus any condition) injected in
  between, either added as a per-channel bias or as a scale-shift of the second GroupNorm
  (`GN(h) * (1 + scale) + shift`, ADM's "adaptive group normalisation", Dhariwal & Nichol
  2021, sec. 3), then SiLU -> dropout -> a zero-initialised conv, plus the skip path.
- `AttentionBlock`: the feature map flattened to H*W tokens through the shared
  `tinygen.nn.attention.Attention` (self-attention). With a `context_dim`, context tokens (a
  caption's features) enter in one of two ways (`context_mode`):
  `cross_attention` -- a second attention from the pixels to the tokens (latent diffusion,
  Rombach et al. 2022, sec. 3.3); `concat_kv` -- the tokens, projected per block into keys
  and values (a 1x1 projection), are put in front of the pixels' own keys and values in the
  self-attention (GLIDE's `encoder_kv`, Nichol et al. 2021, sec. 2.3): one softmax over
  tokens and pixels together.
- `Downsample` (stride-2 conv) and `Upsample` (nearest 2x + conv), as DDPM; with
  `asymmetric_padding` the downsampler pads (0, 1, 0, 1) -- right and bottom only -- and
  convolves unpadded, the layout of the LDM / Stable Diffusion autoencoder's encoder.
- Without an embedding (`emb_dim=None`) a `ResBlock` is the plain residual block of an
  autoencoder (the KL autoencoder of latent diffusion, `tinygen.models.autoencoder`).
- `zero_module`: the last conv of every residual branch starts at zero, so the untrained
  network is the identity on each residual path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.nn.attention import Attention
from tinygen.nn.embeddings import sinusoidal_embedding_2d


def norm_groups_for(channels: int, max_groups: int) -> int:
    """The largest group count <= max_groups that divides `channels`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero and return it (ADM's `zero_module`): the last
    layer of a residual branch starts at zero, so the untrained branch is the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the time(+class) embedding injected between its two convs.

    `emb_dim=None` builds it without an embedding input (an autoencoder's block): then
    `forward(x)` takes no embedding and there is no `emb_proj`. `eps` is the GroupNorms'
    epsilon (Stable Diffusion's autoencoder uses 1e-6).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int | None,
        *,
        scale_shift: bool,
        dropout: float,
        norm_groups: int,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(norm_groups_for(in_ch, norm_groups), in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = None
        if emb_dim is not None:
            self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(norm_groups_for(out_ch, norm_groups), out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is None:  # an autoencoder's block: no embedding
            return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


CONTEXT_MODES = ("cross_attention", "concat_kv")


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions; context tokens by cross-attention after it, or
    joined to its keys and values (`context_mode`, see the module doc)."""

    def __init__(
        self,
        channels: int,
        *,
        head_channels: int,
        context_dim: int | None,
        norm_groups: int,
        dropout: float,
        context_mode: str = "cross_attention",
        eps: float = 1e-5,
        position_side: int = 0,
    ) -> None:
        super().__init__()
        if context_mode not in CONTEXT_MODES:
            raise TinygenError(
                f"unknown context_mode {context_mode!r}; choose {' or '.join(CONTEXT_MODES)}"
            )
        n_head = channels // head_channels
        self.norm = nn.GroupNorm(norm_groups_for(channels, norm_groups), channels, eps=eps)
        self.attn = Attention(channels, n_head, dropout=dropout)
        zero_module(self.attn.out_proj)
        self.cross_attn = self.encoder_kv = None
        if context_dim is not None and context_mode == "cross_attention":
            self.norm_cross = nn.LayerNorm(channels)
            self.cross_attn = Attention(channels, n_head, context_dim=context_dim, dropout=dropout)
            zero_module(self.cross_attn.out_proj)
        elif context_dim is not None:
            self.encoder_kv = nn.Linear(context_dim, 2 * channels)  # GLIDE's 1x1 conv
        # position_side > 0: a learned embedding of the (side x side) pixel grid on the
        # attention input, started at the 2-D sinusoids, so each query knows its place
        self.position = None
        if position_side:
            self.position = nn.Parameter(sinusoidal_embedding_2d(position_side, channels))

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W); context (B, S, context_dim) with context_mask (B, S), True for
        real tokens (S may be 0: no tokens, plain self-attention)."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.position is not None:
            if h * w != self.position.shape[0]:
                side = math.isqrt(self.position.shape[0])
                raise TinygenError(
                    f"this attention block embeds the positions of a {side}x{side} feature "
                    f"map (attention_positions), got {h}x{w}: sample at the trained size"
                )
            tokens = tokens + self.position.to(tokens.dtype)
        if (self.cross_attn is not None or self.encoder_kv is not None) and context is None:
            raise TinygenError("this U-Net is conditioned on context tokens and needs them")
        prefix, mask = None, None
        if self.encoder_kv is not None:
            prefix = self.encoder_kv(context).chunk(2, dim=-1)  # keys, values (B, S, C)
            if context_mask is not None:
                pixels = context_mask.new_ones(b, h * w)
                mask = torch.cat([context_mask.bool(), pixels.bool()], dim=1)  # (B, S + HW)
        out = x.flatten(2).transpose(1, 2) + self.attn(
            tokens, prefix_kv=prefix, key_padding_mask=mask
        )
        if self.cross_attn is not None:
            out = out + self.cross_attn(
                self.norm_cross(out), context, key_padding_mask=context_mask
            )
        return out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """A stride-2 3x3 conv; padded by one on every side, or (asymmetric_padding) only on the
    right and bottom, as the LDM / Stable Diffusion autoencoder's encoder."""

    def __init__(self, channels: int, *, asymmetric_padding: bool = False) -> None:
        super().__init__()
        self.asymmetric_padding = asymmetric_padding
        padding = 0 if asymmetric_padding else 1
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.asymmetric_padding:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
