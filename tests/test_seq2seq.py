"""The encoder-decoder Transformer: masks, causality, caches, beam search, loss, saving."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tinygen.data.translation import pad_batch
from tinygen.errors import TinygenError
from tinygen.models.registry import build_model
from tinygen.models.seq2seq import BOS_ID, EOS_ID, PAD_ID, Seq2SeqConfig, Seq2SeqTransformer
from tinygen.models.seq2seq_decode import beam_search, greedy_decode, length_penalty
from tinygen.nn.attention import Attention
from tinygen.nn.transformer import Block
from tinygen.train.checkpoint import load_weights, save_weights


def tiny_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    config = dict(
        src_vocab_size=11,
        tgt_vocab_size=9,
        d_model=32,
        n_head=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_src_len=12,
        max_tgt_len=10,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    return Seq2SeqTransformer(Seq2SeqConfig(**config)).eval()


def random_ids(generator: torch.Generator, b: int, t: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (b, t), generator=generator)  # real tokens only


LAYOUTS = [dict(norm="pre"), dict(norm="post"), dict(positions="learned")]


def test_reuses_the_shared_attention_and_block() -> None:
    model = tiny_model()
    assert all(type(b) is Block for b in [*model.encoder, *model.decoder])
    assert not any(b.attn.causal for b in model.encoder)
    assert all(b.attn.causal and isinstance(b.cross_attn, Attention) for b in model.decoder)
    assert model.lm_head.weight is model.tgt_embed.weight


@pytest.mark.parametrize("layout", LAYOUTS)
def test_source_padding_never_changes_real_outputs(layout: dict) -> None:
    """A batch of sources of different lengths gives each row what it gives alone."""
    model = tiny_model(**layout)
    g = torch.Generator().manual_seed(1)
    lengths = [3, 7, 5]
    sources = [random_ids(g, 1, n, 11) for n in lengths]
    tgt_in = torch.cat([torch.full((3, 1), BOS_ID), random_ids(g, 3, 4, 9)], dim=1)
    batch = torch.full((3, 9), PAD_ID)  # longer than any source: extra all-padding columns
    for i, src in enumerate(sources):
        batch[i, : src.shape[1]] = src[0]
    memory, _ = model.encode(batch)
    logits = model(batch, tgt_in)
    for i, src in enumerate(sources):
        alone_memory, _ = model.encode(src)
        torch.testing.assert_close(memory[i, : lengths[i]], alone_memory[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            logits[i], model(src, tgt_in[i : i + 1])[0], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_target_padding_never_changes_real_outputs(layout: dict) -> None:
    model = tiny_model(**layout)
    g = torch.Generator().manual_seed(2)
    src = random_ids(g, 2, 6, 11)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), random_ids(g, 2, 3, 9)], dim=1)
    padded = torch.cat([tgt_in, torch.full((2, 4), PAD_ID)], dim=1)
    torch.testing.assert_close(model(src, padded)[:, :4], model(src, tgt_in), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoder_is_causal(layout: dict) -> None:
    """Changing target token j changes no logit before position j (and does change j)."""
    model = tiny_model(**layout)
    g = torch.Generator().manual_seed(3)
    src = random_ids(g, 1, 5, 11)
    tgt_in = torch.cat([torch.full((1, 1), BOS_ID), random_ids(g, 1, 6, 9)], dim=1)
    base = model(src, tgt_in)
    for j in range(1, 7):
        changed = tgt_in.clone()
        changed[0, j] = 3 + (changed[0, j] - 3 + 1) % 6
        out = model(src, changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out[:, j], base[:, j])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kv_cache_matches_full_recompute(layout: dict) -> None:
    model = tiny_model(**layout)
    g = torch.Generator().manual_seed(4)
    src = random_ids(g, 5, 8, 11)
    src[1, 5:] = PAD_ID
    cached = greedy_decode(model, src, use_cache=True)
    assert torch.equal(cached, greedy_decode(model, src, use_cache=False))
    beams = beam_search(model, src, beam_size=3, use_cache=True)
    assert torch.equal(beams, beam_search(model, src, beam_size=3, use_cache=False))


def test_beam_one_equals_greedy() -> None:
    model = tiny_model(seed=5)
    g = torch.Generator().manual_seed(5)
    src = random_ids(g, 8, 6, 11)
    for alpha in (0.0, 0.6, 2.0):
        assert torch.equal(
            beam_search(model, src, beam_size=1, alpha=alpha), greedy_decode(model, src)
        )


def _sequence_log_prob(model: Seq2SeqTransformer, src: torch.Tensor, tokens: list[int]) -> float:
    """log p(tokens | src) by teacher forcing -- the independent scorer of a hypothesis."""
    tgt_in = torch.tensor([[BOS_ID, *tokens[:-1]]])
    with torch.no_grad():
        logits = model(src, tgt_in)[0].clone()
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(sum(log_probs[i, t] for i, t in enumerate(tokens)))


def _all_scores(model: Seq2SeqTransformer, src: torch.Tensor, hyps: list[tuple]) -> torch.Tensor:
    """log p(h | src) of every hypothesis h, by teacher forcing in one batch."""
    tgt_in = pad_batch([[BOS_ID, *h[:-1]] for h in hyps])
    with torch.no_grad():
        logits = model(src.expand(len(hyps), -1), tgt_in)
    logits[..., [PAD_ID, BOS_ID]] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)
    return torch.tensor(
        [sum(log_probs[i, t, tok] for t, tok in enumerate(h)) for i, h in enumerate(hyps)]
    )


def test_wide_beam_finds_the_exhaustive_best() -> None:
    """With a beam as wide as the whole hypothesis space (3 choices, 3 steps: 27 leaves),
    beam search must return the argmax of the length-normalised score over all of them,
    for alpha 0 and 1 -- and alpha must matter for some sources, or the test proves little."""
    model = tiny_model(seed=1, tgt_vocab_size=5, max_tgt_len=3)  # outputs: eos, 3, 4
    with torch.no_grad():
        model.tgt_embed.weight.mul_(0.5)  # flatter distributions: length matters more often
    sources = random_ids(torch.Generator().manual_seed(6), 24, 4, 11)
    hyps = sorted(
        {
            seq[: seq.index(EOS_ID) + 1] if EOS_ID in seq else seq
            for seq in itertools.product([EOS_ID, 3, 4], repeat=3)
        }
    )
    lengths = torch.tensor([len(h) for h in hyps])
    alpha_mattered = False
    for i in range(24):
        log_probs = _all_scores(model, sources[i : i + 1], hyps)
        best = {a: hyps[int((log_probs / length_penalty(lengths, a)).argmax())] for a in (0, 1)}
        alpha_mattered |= best[0] != best[1]
        for alpha in (0.0, 1.0):
            found = beam_search(model, sources[i : i + 1], beam_size=27, alpha=alpha)[0]
            assert tuple(t for t in found.tolist() if t != PAD_ID) == best[alpha]
    assert alpha_mattered


def test_beam_search_scores_at_least_greedy() -> None:
    """With alpha 0, the beam's pick is never less likely than the greedy output."""
    model = tiny_model(seed=7, max_tgt_len=6)
    g = torch.Generator().manual_seed(7)
    src = random_ids(g, 6, 5, 11)
    greedy, beam = greedy_decode(model, src), beam_search(model, src, beam_size=4, alpha=0.0)
    for i in range(6):
        pick = [t for t in beam[i].tolist() if t != PAD_ID]
        base = [t for t in greedy[i].tolist() if t != PAD_ID]
        one = src[i : i + 1]
        assert _sequence_log_prob(model, one, pick) >= _sequence_log_prob(model, one, base) - 1e-5


def test_length_penalty_is_gnmt_formula() -> None:
    lengths = torch.tensor([1, 4, 10])
    expected = torch.tensor([((5 + n) / 6) ** 0.6 for n in (1, 4, 10)])
    torch.testing.assert_close(length_penalty(lengths, 0.6), expected)


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("beam", [1, 3])
def test_encoder_and_cross_projections_run_once_per_batch(beam: int) -> None:
    model = tiny_model(seed=8)
    encoder_calls = _count_calls(model.encoder[0])
    kv_calls = [_count_calls(block.cross_attn.kv_proj) for block in model.decoder]
    src = random_ids(torch.Generator().manual_seed(8), 4, 6, 11)
    out = beam_search(model, src, beam_size=beam) if beam > 1 else greedy_decode(model, src)
    assert out.shape[1] > 2  # several decoder steps happened
    assert encoder_calls[0] == 1
    assert [c[0] for c in kv_calls] == [1, 1]
    # the uncached twin re-projects the encoder output every step, the encoder still once
    greedy_decode(model, src, use_cache=False)
    assert encoder_calls[0] == 2 and kv_calls[0][0] > 3


def test_loss_is_label_smoothed_cross_entropy_ignoring_padding() -> None:
    """Against the formula of Szegedy et al. 2016: (1 - eps) * NLL + eps * mean_k(-log p_k)."""
    eps = 0.1
    model = tiny_model(seed=9, label_smoothing=eps)
    g = torch.Generator().manual_seed(9)
    src = random_ids(g, 2, 5, 11)
    tgt = random_ids(g, 2, 4, 9)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), tgt], dim=1)
    tgt_out = torch.cat([tgt, torch.full((2, 1), EOS_ID)], dim=1)
    tgt_out[1, 3:] = PAD_ID
    log_probs = torch.log_softmax(model(src, tgt_in), dim=-1)
    terms = []
    for b, t in itertools.product(range(2), range(5)):
        if tgt_out[b, t] != PAD_ID:
            nll = -log_probs[b, t, tgt_out[b, t]]
            terms.append((1 - eps) * nll + eps * -log_probs[b, t].mean())
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(model.loss(src, tgt_in, tgt_out), expected)
    smooth_free = F.cross_entropy(log_probs.reshape(-1, 9), tgt_out.reshape(-1), ignore_index=0)
    assert not torch.isclose(expected, smooth_free)


def test_embeddings_are_scaled_by_sqrt_d_and_positions_are_sinusoidal() -> None:
    model = tiny_model(seed=10)
    ids = torch.tensor([[3, 4, 5]])
    x = model._embed(ids, model.src_embed, 0, "src")
    pos = torch.arange(3).float()[:, None]
    i = torch.arange(16).float()
    angles = pos / 10000 ** (i / 16)  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), d = 32
    expected_pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    expected = model.src_embed.weight[ids[0]] * math.sqrt(32) + expected_pe
    torch.testing.assert_close(x[0], expected, atol=1e-5, rtol=1e-5)


def test_shared_embeddings_save_and_load(tmp_path) -> None:
    model = tiny_model(seed=11, src_vocab_size=9, share_embeddings=True)
    assert model.src_embed is model.tgt_embed and model.lm_head.weight is model.src_embed.weight
    save_weights(model, tmp_path / "w.safetensors")
    rebuilt = build_model("seq2seq", {**model.config.__dict__})
    load_weights(rebuilt, tmp_path / "w.safetensors")
    src = random_ids(torch.Generator().manual_seed(11), 2, 4, 9)
    assert torch.equal(greedy_decode(rebuilt.eval(), src), greedy_decode(model, src))
    assert rebuilt.src_embed is rebuilt.tgt_embed


def test_config_errors_are_clear() -> None:
    with pytest.raises(TinygenError, match="share_embeddings"):
        tiny_model(share_embeddings=True)
    with pytest.raises(TinygenError, match="divisible"):
        tiny_model(d_model=30)
    with pytest.raises(TinygenError, match="norm"):
        tiny_model(norm="middle")
    model = tiny_model()
    with pytest.raises(TinygenError, match="max_src_len"):
        model.encode(torch.full((1, 13), 3))
    with pytest.raises(TinygenError, match="beam"):
        beam_search(model, torch.full((1, 3), 3), beam_size=0)
