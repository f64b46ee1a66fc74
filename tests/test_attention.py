"""The shared attention module: the SDPA fast path against the plain softmax reference,
masks, and the KV cache against full recomputation."""

import pytest
import torch

from tinygen.nn.attention import Attention, KVCache, StaticKV


def make(causal=False, context_dim=None, seed=0):
    torch.manual_seed(seed)
    return Attention(32, 4, causal=causal, context_dim=context_dim).eval()


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_equals_reference(causal):
    attn = make(causal)
    x = torch.randn(2, 7, 32)
    fast = attn(x)
    attn.use_sdpa = False
    torch.testing.assert_close(fast, attn(x), rtol=1e-5, atol=1e-6)


def test_reference_matches_explicit_formula():
    attn = make(causal=True)
    x = torch.randn(1, 5, 32)
    q, k, v = attn.qkv_proj(x).split(32, dim=2)
    q, k, v = (t.view(1, 5, 4, 8).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores = scores + torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 32)
    torch.testing.assert_close(attn(x), attn.out_proj(y), rtol=1e-5, atol=1e-6)


def test_causal_attention_ignores_the_future():
    attn = make(causal=True)
    x = torch.randn(1, 8, 32)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 32)
    torch.testing.assert_close(attn(x)[:, :5], attn(y)[:, :5])


def test_kv_cache_matches_full_recompute():
    attn = make(causal=True)
    x = torch.randn(2, 9, 32)
    full = attn(x)
    cache = KVCache()
    prefix = attn(x[:, :4], cache=cache)  # prefill several tokens at once
    steps = [attn(x[:, i : i + 1], cache=cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, rtol=1e-5, atol=1e-6)


def test_cached_multi_token_chunk_uses_offset_causal_mask():
    attn = make(causal=True)
    x = torch.randn(1, 10, 32)
    cache = KVCache()
    first = attn(x[:, :6], cache=cache)
    second = attn(x[:, 6:], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], 1), attn(x), rtol=1e-5, atol=1e-6)


def test_padding_keys_do_not_change_real_outputs():
    attn = make()
    x = torch.randn(1, 5, 32)
    padded = torch.cat([x, torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(
        attn(padded, key_padding_mask=mask)[:, :5], attn(x), rtol=1e-5, atol=1e-6
    )


def test_cross_attention_static_cache_projects_context_once():
    attn = make(context_dim=16)
    x, ctx = torch.randn(2, 3, 32), torch.randn(2, 6, 16)
    calls = []
    attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
    cache = StaticKV()
    out = [attn(x[:, i : i + 1], ctx, cache=cache) for i in range(3)]
    assert len(calls) == 1
    torch.testing.assert_close(torch.cat(out, 1), attn(x, ctx), rtol=1e-5, atol=1e-6)


def test_attention_weights_sum_to_one_and_respect_causality():
    attn = make(causal=True)
    attn(torch.randn(1, 6, 32), need_weights=True)
    w = attn.last_weights
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 6))
    assert torch.all(torch.triu(w[0, 0], diagonal=1) == 0)
