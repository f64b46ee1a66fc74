"""Stable Diffusion's attention block for the U-Net: a Transformer over the pixels of a feature map.

Latent diffusion (Rombach et al. 2022, sec. 3.3 and appendix) replaces ADM's attention block
by a small Transformer, so that the U-Net can attend to a caption's tokens:

    x (B, C, H, W) -> GroupNorm -> proj_in -> H*W tokens of width C
        -> depth x [ h + SelfAttn(LN(h)),  h + CrossAttn(LN(h), context),  h + FF(LN(h)) ]
        -> proj_out -> + x

The feed-forward network is GEGLU (Shazeer 2020, "GLU variants improve Transformer"):
(a, g) = split(W1 h), FF(h) = W2 (a * GELU(g)), hidden width 4C. proj_in / proj_out are 1x1
convolutions (Stable Diffusion v1) or linears on the tokens (`linear_projection`, v2). All
attentions are the shared `tinygen.nn.attention.Attention`.

The submodule names are those of diffusers' `Transformer2DModel` / `BasicTransformerBlock`
(`norm`, `proj_in`, `transformer_blocks.k.{norm1, attn1, norm2, attn2, norm3, ff}`,
`proj_out`), so the converter's table (`tinygen.models.convert.stable_diffusion`) is short.
Our attention fuses q, k, v into one projection; the table concatenates diffusers' three.

A context with no tokens (S = 0) or no context at all skips the cross-attention: attending
to nothing adds nothing, and the block is self-attention + feed-forward.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.nn.attention import Attention
from tinygen.nn.resnet import norm_groups_for, zero_module


def sd_attention(dim: int, n_head: int, context_dim: int | None, dropout: float) -> Attention:
    """Stable Diffusion's attention: q, k, v projections without bias, the output with one.

    Our `Attention` has one `bias` flag for all four, so the output projection is rebuilt
    with a bias (the weights are those of an `nn.Linear` either way)."""
    attn = Attention(dim, n_head, context_dim=context_dim, bias=False, dropout=dropout)
    attn.out_proj = nn.Linear(dim, dim)
    return attn


class GEGLUFeedForward(nn.Module):
    """FF(h) = out(a * GELU(g)), (a, g) = proj(h) split in two (Shazeer 2020, eq. 6)."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = mult * dim
        self.proj = nn.Linear(dim, 2 * hidden)  # the value half, then the gate half
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.out(self.dropout(value * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the context, GEGLU feed-forward;
    each with a residual (diffusers' `BasicTransformerBlock` in Stable Diffusion's layout)."""

    def __init__(
        self,
        dim: int,
        n_head: int,
        *,
        context_dim: int | None,
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn1 = sd_attention(dim, n_head, None, dropout)
        self.norm2 = self.attn2 = None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.attn2 = sd_attention(dim, n_head, context_dim, dropout)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ff = GEGLUFeedForward(dim, dropout=dropout)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, T, dim); context (B, S, context_dim) with context_mask (B, S), True = real."""
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None and context is not None and context.shape[1] > 0:
            x = x + self.attn2(self.norm2(x), context, key_padding_mask=context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in -> `depth` TransformerBlocks over the H*W pixels -> proj_out, + x.

    Args:
        channels: C of the feature map (also the tokens' width).
        n_head: attention heads (Stable Diffusion v1: 8 at every level).
        context_dim: width of the context tokens (CLIP ViT-L/14's 768); None = no
            cross-attention.
        depth: Transformer blocks (diffusers' `transformer_layers_per_block`).
        linear_projection: proj_in / proj_out as linears on the tokens (SD v2) instead of
            1x1 convs (SD v1).
        norm_groups, eps: the GroupNorm (diffusers fixes eps = 1e-6); layer_norm_eps: the
            LayerNorms'.
    """

    def __init__(
        self,
        channels: int,
        n_head: int,
        *,
        context_dim: int | None,
        depth: int = 1,
        linear_projection: bool = False,
        norm_groups: int = 32,
        eps: float = 1e-6,
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % n_head:
            raise TinygenError(f"width {channels} is not divisible by {n_head} attention heads")
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(norm_groups_for(channels, norm_groups), channels, eps=eps)
        projection = nn.Linear if linear_projection else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = projection(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                channels, n_head, context_dim=context_dim, dropout=dropout, eps=layer_norm_eps
            )
            for _ in range(depth)
        )
        self.proj_out = zero_module(projection(channels, channels))  # starts as the identity

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W); context (B, S, context_dim), context_mask (B, S) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        h = self.norm(x)
        if not self.linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(b, height * width, c)  # (B, H*W, C)
        if self.linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, context_mask)
        if self.linear_projection:
            h = self.proj_out(h)
        h = h.reshape(b, height, width, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear_projection:
            h = self.proj_out(h.contiguous())
        return h + x
