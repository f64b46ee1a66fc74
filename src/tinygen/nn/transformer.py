"""The Transformer block shared by GPT, the encoder-decoder, CLIP's towers and the prior.

A block is attention + MLP with residual connections, in one of two layouts:
- `pre` (GPT-2, nanoGPT): x + Attn(LN(x)), then x + MLP(LN(x)). Trains stably; the default.
- `post` (Vaswani et al. 2017, sec. 3.1): LN(x + Attn(x)), then LN(x + MLP(x)).
A decoder block adds cross-attention to a context between the two.

The MLP's activation, its hidden width and the LayerNorm epsilon are options, so the
published models run in these same blocks: GPT-2 uses the tanh approximation of GELU,
OpenAI's CLIP QuickGELU, x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016, sec. 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinygen.nn.attention import Attention, KVCache, StaticKV


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI's CLIP trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


def activation_module(name: str) -> nn.Module:
    """The MLP non-linearity by name: exact GELU (ours, BERT), its tanh approximation
    (GPT-2's `gelu_new`) or QuickGELU (OpenAI CLIP)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear (paper eq. 2, GELU).

    The hidden width is `hidden_mult * dim` unless `hidden_dim` is given (checkpoints whose
    width is no whole multiple, e.g. CLIP ViT-bigG's 8192 for 1664)."""

    def __init__(
        self,
        dim: int,
        *,
        hidden_mult: int = 4,
        hidden_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        activation: str = "gelu",
    ):
        super().__init__()
        hidden = hidden_dim or hidden_mult * dim
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.act = activation_module(activation)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """One Transformer layer: (causal) self-attention, optional cross-attention, MLP."""

    def __init__(
        self,
        dim: int,
        n_head: int,
        *,
        causal: bool = False,
        context_dim: int | None = None,
        norm: str = "pre",
        bias: bool = True,
        dropout: float = 0.0,
        mlp_mult: int = 4,
        mlp_dim: int | None = None,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pre_norm = norm == "pre"
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.attn = Attention(dim, n_head, causal=causal, bias=bias, dropout=dropout)
        self.cross_attn = None
        if context_dim is not None:
            self.ln_cross = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
            self.cross_attn = Attention(
                dim, n_head, context_dim=context_dim, bias=bias, dropout=dropout
            )
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps, bias=bias)
        self.mlp = MLP(
            dim,
            hidden_mult=mlp_mult,
            hidden_dim=mlp_dim,
            bias=bias,
            dropout=dropout,
            activation=activation,
        )

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        cross_cache: StaticKV | None = None,
        need_weights: bool = False,
    ) -> Tensor:
        """x: (B, T, dim). padding_mask (B, T_total) marks real self-attention keys;
        context_padding_mask (B, S) marks real context tokens."""

        def self_attn(h: Tensor) -> Tensor:
            return self.attn(h, key_padding_mask=padding_mask, cache=cache)

        def cross_attn(h: Tensor) -> Tensor:
            return self.cross_attn(
                h,
                context,
                key_padding_mask=context_padding_mask,
                cache=cross_cache,
                need_weights=need_weights,
            )

        if self.pre_norm:
            x = x + self_attn(self.ln_1(x))
            if self.cross_attn is not None:
                x = x + cross_attn(self.ln_cross(x))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self_attn(x))
        if self.cross_attn is not None:
            x = self.ln_cross(x + cross_attn(x))
        return self.ln_2(x + self.mlp(x))
