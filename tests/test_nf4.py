"""NF4 quantisation against bitsandbytes (CPU) and against its own definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora import LoRALinear, apply_lora, load_adapter, save_adapter
from tinygen.finetune.nf4 import (
    NF4_LEVELS,
    Linear4bit,
    dynamic_map,
    quantize_model,
    quantize_nf4,
)
from tinygen.models.gpt import GPT, GPTConfig

SHAPES = [(64, 128), (33, 7), (1001,), (3, 5, 77)]


@pytest.fixture(scope="module")
def bnb():
    """bitsandbytes' CPU functions, the reference: only the tests that compare against it
    skip without it; the tests of NF4's own definition run anyway."""
    return pytest.importorskip("bitsandbytes.functional")


def gaussian(shape, seed=0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)


def test_levels_and_dynamic_map_equal_bitsandbytes(bnb):
    assert torch.equal(NF4_LEVELS, bnb.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_map(), bnb.create_dynamic_map(signed=True))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_packed_codes_equal_bitsandbytes_byte_for_byte(bnb, shape, dtype):
    weight = gaussian(shape, dtype=dtype)
    ours = quantize_nf4(weight, blocksize=64, double_quant=False)
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(ours.absmax, state.absmax)
    theirs = bnb.dequantize_4bit(packed, state)
    assert torch.equal(ours.dequantize(dtype), theirs)


@pytest.mark.parametrize("shape", [(512, 256), (77, 129)])
def test_double_quantisation_matches_bitsandbytes(bnb, shape):
    """Same 4-bit codes, offset and second-level scales; the 8-bit absmax codes agree
    except a few near-ties that bitsandbytes' CPU kernel rounds to the neighbouring code,
    and where they agree the dequantised weights are identical."""
    weight = gaussian(shape, seed=1)
    ours = quantize_nf4(weight, blocksize=64, double_quant=True)
    packed, state = bnb.quantize_4bit(
        weight, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(ours.absmax_offset, state.offset)
    assert torch.equal(ours.absmax_scale, state.state2.absmax)
    diff = ours.absmax.int() - state.absmax.int()
    assert diff.abs().max() <= 1 and (diff != 0).float().mean() < 0.02
    theirs = bnb.dequantize_4bit(packed, state).reshape(-1)
    agree = (diff == 0).repeat_interleave(64)[: weight.numel()]
    assert torch.equal(ours.dequantize().reshape(-1)[agree], theirs[agree])
    block_max = ours.block_absmax().repeat_interleave(64)[: weight.numel()]
    assert ((ours.dequantize().reshape(-1) - theirs).abs() <= 0.02 * block_max).all()


def test_the_sixteen_levels_round_trip_exactly():
    for double_quant in (False, True):
        q = quantize_nf4(NF4_LEVELS.repeat(4), double_quant=double_quant)
        assert torch.equal(q.codes(), torch.arange(16, dtype=torch.uint8).repeat(4))
        if not double_quant:
            assert torch.equal(q.dequantize(), NF4_LEVELS.repeat(4))


def test_gaussian_round_trip_error_is_within_half_the_widest_level_gap():
    """Each value lands on its nearest level, so |w - dequant(w)| <= absmax * gap / 2 with
    the widest gap between neighbouring levels; the mean error is far smaller."""
    weight = gaussian((256, 256))
    q = quantize_nf4(weight, double_quant=False)
    error = (q.dequantize() - weight).abs().reshape(-1, 64)
    widest_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()
    assert (error <= q.absmax[:, None] * widest_gap / 2 + 1e-7).all()
    relative_rms = (error.pow(2).mean().sqrt() / weight.std()).item()
    assert relative_rms < 0.12  # ~0.1 for NF4 on normal data (QLoRA, fig. 3 regime)


@pytest.mark.parametrize("numel", [64 * 256 * 4, 1001, 64])
def test_packed_size_equals_the_formula(numel):
    weight = gaussian((numel,))
    blocks = -(-numel // 64)
    plain = quantize_nf4(weight, double_quant=False)
    assert plain.nbytes == -(-numel // 2) + 4 * blocks
    dq = quantize_nf4(weight, double_quant=True)
    assert dq.nbytes == -(-numel // 2) + blocks + 4 * -(-blocks // 256) + 4


def test_double_quant_reaches_the_qlora_paper_bits_per_parameter():
    q = quantize_nf4(gaussian((4096, 1024)), double_quant=True)
    # codes + 8-bit absmax per 64 + fp32 scale per 256 blocks + one fp32 offset
    assert q.bits_per_param == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / q.numel)
    assert q.bits_per_param <= 4.13


def test_linear4bit_forward_and_backward_equal_a_float_linear_with_the_dequantised_weight():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    q = Linear4bit.from_linear(linear, double_quant=True)
    reference = nn.Linear(96, 40)
    reference.weight.data = q.dequantize_weight()
    reference.bias.data = linear.bias.data.clone()
    x = torch.randn(5, 3, 96, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, expected = q(x), reference(x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in q.parameters())


def test_qlora_adapter_gets_gradients_and_the_base_stays_frozen():
    """The bitsandbytes CPU trap (adapters silently receiving no gradient after an eval
    forward) must not exist here: adapter grads are non-zero after eval-mode forwards."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=64))
    quantize_model(model)
    apply_lora(model, ["qkv_proj", "fc"], r=4, seed=0)
    x = torch.randint(0, 11, (2, 16))
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    for module in model.modules():
        if isinstance(module, LoRALinear):
            nn.init.normal_(module.lora_B.weight, std=0.1)
    model(x, x)[1].backward()
    for module in model.modules():
        if isinstance(module, LoRALinear):
            assert module.lora_A.weight.grad.abs().sum() > 0
            assert module.lora_B.weight.grad.abs().sum() > 0


def test_quantize_model_skips_the_tied_head_and_qlora_adapters_reload(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=64)
    model = GPT(config).eval()
    replaced = quantize_model(model, skip=[])
    assert "lm_head" not in replaced and len(replaced) == 8
    assert model.lm_head.weight is model.wte.weight
    apply_lora(model, ["qkv_proj"], r=4)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            nn.init.normal_(module.lora_B.weight, std=0.1)
    x = torch.randint(0, 11, (2, 16))
    expected = model(x)[0]
    save_adapter(model, tmp_path)
    torch.manual_seed(0)
    fresh = GPT(config).eval()  # the float base: load_adapter quantises it first
    load_adapter(fresh, tmp_path)
    assert sum(isinstance(m, Linear4bit) for m in fresh.modules()) == 8
    torch.testing.assert_close(fresh(x)[0], expected, rtol=0, atol=0)


def test_merging_into_a_4bit_base_equals_the_unmerged_forward():
    torch.manual_seed(0)
    layer = LoRALinear(Linear4bit.from_linear(nn.Linear(64, 32)), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight, std=0.1)
    x = torch.randn(3, 64)
    expected = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    assert isinstance(layer.base_layer, Linear4bit)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_bad_quantisation_input_gives_clear_errors():
    with pytest.raises(TinygenError, match="blocksize"):
        quantize_nf4(gaussian((128,)), blocksize=48)
    with pytest.raises(TinygenError, match="NaN"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=64))
    apply_lora(model, ["fc"], r=2)
    with pytest.raises(TinygenError, match="before applying LoRA"):
        quantize_model(model)
