"""GPT: causality, generation with and without the KV cache, checkpoints."""

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.models.gpt import GPT, GPTConfig, sample_next_token
from tinygen.train import checkpoint as ckpt

TINY = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    config = GPTConfig(**{**TINY.__dict__, **overrides})
    return GPT(config).eval()


def test_changing_a_later_token_never_changes_earlier_logits():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 23
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_loss_is_cross_entropy_of_logits():
    model = tiny_gpt()
    idx, targets = torch.randint(0, 23, (3, 10)), torch.randint(0, 23, (3, 10))
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 23), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_untrained_loss_is_near_uniform_entropy():
    model = tiny_gpt()
    _, loss = model(torch.randint(0, 23, (8, 16)), torch.randint(0, 23, (8, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(23.0)).item()) < 0.1


def test_input_and_output_embeddings_are_tied():
    model = tiny_gpt()
    assert model.lm_head.weight is model.wte.weight


def test_residual_projections_use_scaled_init():
    model = tiny_gpt(n_layer=8, n_embd=64, n_head=4)
    std = model.blocks[0].attn.out_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.002
    assert abs(model.blocks[0].attn.qkv_proj.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("prompt_len,new_tokens", [(1, 10), (5, 40), (16, 30)])
def test_kv_cache_generation_equals_no_cache_greedy(prompt_len, new_tokens):
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, prompt_len))
    cached = model.generate(idx, new_tokens, temperature=0.0, use_cache=True)
    uncached = model.generate(idx, new_tokens, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape == (2, prompt_len + new_tokens)


def test_kv_cache_generation_equals_no_cache_sampled_with_seed():
    model = tiny_gpt()
    idx = torch.randint(0, 23, (3, 4))
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        runs.append(
            model.generate(idx, 50, temperature=1.3, top_k=10, use_cache=use_cache, generator=gen)
        )
    assert torch.equal(*runs)


def test_context_beyond_block_size_is_cropped_to_the_window():
    """Once the window is full it restarts at the last block_size // 2 tokens: the next
    token depends only on those, never on older ones."""
    model = tiny_gpt()
    idx = torch.randint(0, 23, (1, 16))
    out = model.generate(idx, 1, temperature=0.0)  # 17 > 16 tokens: the window restarts
    expected = model(idx[:, -8:])[0][:, -1].argmax(-1)
    assert out[0, -1] == expected[0]
    other_past = idx.clone()
    other_past[:, :8] = (other_past[:, :8] + 3) % 23
    assert torch.equal(model.generate(other_past, 1, temperature=0.0)[:, -1], out[:, -1])


def test_top_k_only_samples_from_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next_token(logits, top_k=2, generator=gen).item() for _ in range(200)}
    assert draws == {1, 2}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next_token(probs.log(), top_p=0.75, generator=gen).item() for _ in range(300)}
    assert draws == {0, 1}


def test_greedy_is_argmax():
    logits = torch.randn(4, 9)
    assert torch.equal(sample_next_token(logits, temperature=0).squeeze(1), logits.argmax(-1))


def test_checkpoint_round_trip_reproduces_logits_exactly(tmp_path):
    model = tiny_gpt(seed=3)
    ckpt.save_weights(model, tmp_path / "model.safetensors")
    again = tiny_gpt(seed=99)
    ckpt.load_weights(again, tmp_path / "model.safetensors")
    idx = torch.randint(0, 23, (2, 16))
    assert torch.equal(model(idx)[0], again(idx)[0])
    assert again.lm_head.weight is again.wte.weight


def test_loading_weights_of_another_config_is_a_clear_error(tmp_path):
    ckpt.save_weights(tiny_gpt(), tmp_path / "m.safetensors")
    with pytest.raises(TinygenError, match="does not match"):
        ckpt.load_weights(tiny_gpt(n_embd=64), tmp_path / "m.safetensors")


def test_corrupt_weights_are_a_clear_error(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TinygenError, match="corrupt"):
        ckpt.load_weights(tiny_gpt(), tmp_path / "m.safetensors")


def test_bad_config_is_a_clear_error():
    with pytest.raises(TinygenError, match="divisible"):
        GPT(GPTConfig(n_embd=30, n_head=4))


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(TinygenError, match="block_size"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))
