"""One multi-head attention for every model: self, causal and cross attention.

GPT (causal self-attention), the encoder-decoder Transformer (self + cross), CLIP's
towers, the U-Net and the diffusion prior all use this module, so it is written once.

The fast path is `torch.nn.functional.scaled_dot_product_attention` (SDPA). Beside it
lives the plain softmax(QK^T / sqrt(d)) V of "Attention Is All You Need" (eq. 1), used
when the attention weights are wanted (attention maps) and by tests as the reference.

Decoding one token at a time re-uses the keys and values of the earlier tokens through
a `KVCache`; cross-attention caches the projected context once (`StaticKV`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, each (B, n_head, T, head_dim)."""

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions and return the keys/values of all positions."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def crop(self, length: int) -> None:
        """Keep only the first `length` positions (used when a context overflows)."""
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the caches of surviving beams)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class StaticKV:
    """Projected keys/values of a fixed context (cross-attention), computed once."""

    k: Tensor | None = None
    v: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Plain scaled dot-product attention (Vaswani et al. 2017, eq. 1).

    q: (B, H, Tq, hs), k/v: (B, H, Tk, hs), mask: bool broadcastable to (B, H, Tq, Tk),
    True where attention is allowed. Returns (output (B, H, Tq, hs), weights (B, H, Tq, Tk)).
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    weights = torch.nan_to_num(weights)  # rows with every key masked attend to nothing
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def causal_mask(t_query: int, t_key: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) bool mask where query i (the last Tq of Tk positions) sees keys <= its own."""
    offset = t_key - t_query
    q_pos = torch.arange(t_query, device=device)[:, None] + offset
    return torch.arange(t_key, device=device)[None, :] <= q_pos


class Attention(nn.Module):
    """Multi-head attention.

    Self-attention projects queries, keys and values from `x` with one fused matrix
    (`qkv_proj`). With `context_dim` set it is cross-attention: queries come from `x`
    (`q_proj`), keys and values from `context` (`kv_proj`). `causal=True` masks future
    positions. The output goes through `out_proj`, the residual projection.
    """

    def __init__(
        self,
        dim: int,
        n_head: int,
        *,
        context_dim: int | None = None,
        causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % n_head != 0:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.causal = causal
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.kv_proj = nn.Linear(context_dim, 2 * dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.use_sdpa = True  # tests switch this off to compare against the reference path
        self.last_weights: Tensor | None = None  # filled when forward(need_weights=True)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hs)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | StaticKV | None = None,
        need_weights: bool = False,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: (B, T, dim); context: (B, S, context_dim) for cross-attention.

        key_padding_mask: (B, Tk) bool, True for real tokens, False for padding keys.
        cache: a `KVCache` (self-attention: appends this call's keys/values) or a
        `StaticKV` (cross-attention: computed from `context` on first use, then reused).
        need_weights: store the attention weights (B, H, Tq, Tk) in `self.last_weights`.
        prefix_kv: extra keys and values (B, S, dim) each, already projected, put in front of
            this layer's own (GLIDE's `encoder_kv`: text tokens joining image self-attention);
            key_padding_mask then covers S + T keys.
        """
        b, t, _ = x.shape
        past = 0
        if self.is_cross:
            q = self._split_heads(self.q_proj(x))
            if isinstance(cache, StaticKV) and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                k, v = self.kv_proj(context).split(self.dim, dim=2)
                k, v = self._split_heads(k), self._split_heads(v)
                if isinstance(cache, StaticKV):
                    cache.k, cache.v = k, v
        else:
            q, k, v = self.qkv_proj(x).split(self.dim, dim=2)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if isinstance(cache, KVCache):
                past = cache.length
                k, v = cache.append(k, v)
        if prefix_kv is not None:
            if self.causal or cache is not None:
                raise ValueError("prefix_kv is for bidirectional attention without a cache")
            k = torch.cat([self._split_heads(prefix_kv[0]), k], dim=2)
            v = torch.cat([self._split_heads(prefix_kv[1]), v], dim=2)

        fast = self.use_sdpa and not need_weights
        mask = self._build_mask(b, t, k.shape[2], past, key_padding_mask, fast, x.device)
        dropout_p = self.dropout if self.training else 0.0
        if not fast:
            y, weights = attention_reference(q, k, v, mask, dropout_p)
            self.last_weights = weights if need_weights else None
        elif mask is None and self.causal and past == 0 and t > 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(b, t, self.dim)  # (B, T, dim)
        return self.resid_dropout(self.out_proj(y))

    def _build_mask(
        self,
        b: int,
        t_query: int,
        t_key: int,
        past: int,
        key_padding_mask: Tensor | None,
        fast: bool,
        device: torch.device,
    ) -> Tensor | None:
        """Combine the causal and padding masks into one bool (B|1, 1, Tq, Tk) mask."""
        needs_causal = self.causal and t_query > 1
        if not needs_causal and key_padding_mask is None:
            return None
        if needs_causal and key_padding_mask is None and past == 0 and fast:
            return None  # SDPA's is_causal flag handles it without materialising a mask
        mask = torch.ones(1, 1, t_query, t_key, dtype=torch.bool, device=device)
        if needs_causal:
            mask = mask & causal_mask(t_query, t_key, device)[None, None]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, t_key):
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                    f"expected {(b, t_key)}"
                )
            mask = mask & key_padding_mask[:, None, None, :].bool()
        return mask
