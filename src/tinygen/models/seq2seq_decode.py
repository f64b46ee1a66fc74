"""Decoding the encoder-decoder Transformer: greedy search and beam search, batched.

Both encode the source once. With `use_cache=True` (the default) the decoder keeps a
`KVCache` per layer for its self-attention, so each step costs one position's work, and a
`StaticKV` per layer for cross-attention, so the encoder output is projected to keys and
values once per batch instead of once per step. `use_cache=False` is the simple twin: it
re-runs the decoder on the whole prefix every step; tests hold the two equal.

Beam search (Wu et al. 2016, sec. 7; used by Vaswani et al. 2017 with beam 4, alpha 0.6)
keeps the `beam_size` best prefixes by total log-probability. A finished beam (it emitted
<eos>) stays in the beam with its score frozen, extended only by padding; at the end each
hypothesis is ranked by the GNMT length-normalised score  log p(y|x) / lp(y),
lp(y) = ((5 + |y|) / 6) ** alpha  -- alpha = 0 ranks by raw log-probability.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.models.seq2seq import BOS_ID, EOS_ID, PAD_ID, Seq2SeqTransformer
from tinygen.nn.attention import KVCache, StaticKV


def _max_steps(model: Seq2SeqTransformer, max_len: int | None) -> int:
    # the decoder input holds <bos> + the tokens so far, and positions stop at max_tgt_len
    limit = model.config.max_tgt_len
    if max_len is None:
        return limit
    if not 0 < max_len <= limit:
        raise TinygenError(
            f"max_len must be in 1..{limit} (the model's max_tgt_len), got {max_len}"
        )
    return max_len


def _new_caches(model: Seq2SeqTransformer, use_cache: bool):
    if not use_cache:
        return None, None
    return ([KVCache() for _ in model.decoder], [StaticKV() for _ in model.decoder])


def _forbid_specials(logits: Tensor) -> Tensor:
    """<pad> and <bos> are never written: only <eos> and real tokens are outputs."""
    logits = logits.clone()
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    return logits


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src: Tensor, *, max_len: int | None = None, use_cache: bool = True
) -> Tensor:
    """Pick the most likely token at every step. src: (B, S) right-padded ids.

    Returns (B, L) ids without <bos>: each row ends with <eos> then <pad>s, or is cut at
    `max_len` (default the model's max_tgt_len) if it never finished.
    """
    steps = _max_steps(model, max_len)
    memory, src_mask = model.encode(src)  # (B, S, d), (B, S)
    b = src.shape[0]
    tokens = torch.full((b, 1), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    caches, cross_caches = _new_caches(model, use_cache)
    for _ in range(steps):
        inputs = tokens[:, -1:] if use_cache else tokens
        out = model.decode(inputs, memory, src_mask, caches=caches, cross_caches=cross_caches)
        logits = out[:, -1]  # (B, V)
        next_token = _forbid_specials(logits).argmax(dim=-1).masked_fill(finished, PAD_ID)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == EOS_ID
        if finished.all():
            break
    return tokens[:, 1:]


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ((5 + |y|) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    *,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Beam search over a batch. src: (B, S). Returns the best hypothesis per row, (B, L),
    laid out like `greedy_decode`'s output. beam_size 1 is greedy decoding."""
    if beam_size < 1:
        raise TinygenError(f"--beam must be at least 1, got {beam_size}")
    vocab = model.config.tgt_vocab_size
    if alpha < 0:
        raise TinygenError(f"--length-penalty must be >= 0, got {alpha}")
    steps = _max_steps(model, max_len)
    b, k = src.shape[0], beam_size
    memory, src_mask = model.encode(src)  # encoded once, then repeated per beam
    memory = memory.repeat_interleave(k, dim=0)  # (B*K, S, d)
    src_mask = src_mask.repeat_interleave(k, dim=0)  # (B*K, S)
    tokens = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=src.device)
    scores = torch.zeros(b, k, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one alive at first
    finished = torch.zeros(b * k, dtype=torch.bool, device=src.device)
    caches, cross_caches = _new_caches(model, use_cache)
    batch_offset = (torch.arange(b, device=src.device) * k)[:, None]  # (B, 1)
    for _ in range(steps):
        inputs = tokens[:, -1:] if use_cache else tokens
        out = model.decode(inputs, memory, src_mask, caches=caches, cross_caches=cross_caches)
        logits = out[:, -1]  # (B*K, V)
        log_probs = torch.log_softmax(_forbid_specials(logits.float()), dim=-1)
        # a finished beam continues only with padding, at no cost
        log_probs[finished] = float("-inf")
        log_probs[finished, PAD_ID] = 0.0
        candidates = (scores.view(b * k, 1) + log_probs).view(b, k * vocab)
        scores, flat = candidates.topk(k, dim=1)  # (B, K)
        rows = (batch_offset + flat // vocab).view(-1)  # which old beam each new one extends
        new_token = (flat % vocab).view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), new_token[:, None]], dim=1)
        finished = finished.index_select(0, rows) | (new_token == EOS_ID)
        finished |= scores.view(-1) == float("-inf")  # a dead beam (beam > candidates)
        if caches is not None:
            for cache in caches:
                cache.reorder(rows)
            # cross_caches need no reordering: beams of one source share its keys/values
        if finished.all():
            break
    hyps = tokens[:, 1:]  # (B*K, L)
    lengths = (hyps != PAD_ID).sum(dim=1).view(b, k)  # tokens written, <eos> included
    normalised = scores / length_penalty(lengths, alpha)
    best = normalised.argmax(dim=1)  # (B,)
    return hyps.view(b, k, -1)[torch.arange(b, device=src.device), best]


def decode_batch(
    model: Seq2SeqTransformer,
    src: Tensor,
    *,
    beam_size: int = 1,
    alpha: float = 0.6,
    max_len: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Greedy when beam_size is 1, beam search otherwise."""
    if beam_size == 1:
        return greedy_decode(model, src, max_len=max_len, use_cache=use_cache)
    return beam_search(
        model, src, beam_size=beam_size, alpha=alpha, max_len=max_len, use_cache=use_cache
    )
