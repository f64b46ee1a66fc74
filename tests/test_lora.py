"""LoRA maths and bookkeeping, on our GPT and toy modules (PEFT interchange: test_lora_peft)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora import (
    LoRALinear,
    TrainableView,
    apply_lora,
    count_parameters,
    load_adapter,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from tinygen.models.gpt import GPT, GPTConfig

TARGETS = ["qkv_proj", "out_proj", "fc", "proj"]


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    config.update(overrides)
    return GPT(GPTConfig(**config)).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(seed))


def randomise_adapter(model: nn.Module, seed: int = 5) -> None:
    """Give lora_B non-zero values, as training would, so the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=gen))


def test_lora_at_init_leaves_outputs_unchanged():
    model, x = tiny_gpt(), tokens()
    before = model(x)[0]
    apply_lora(model, TARGETS, r=4, alpha=8)
    assert torch.equal(model(x)[0], before)


def test_forward_equals_the_lora_formula():
    """h = W0 x + b + (alpha / r) B A x (Hu et al. eq. 3), and alpha / sqrt(r) with rsLoRA."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(4, 6)
    for rslora, scale in ((False, 12 / 3), (True, 12 / math.sqrt(3))):
        layer = LoRALinear(base, r=3, alpha=12, use_rslora=rslora)
        nn.init.normal_(layer.lora_B.weight)
        a, b = layer.lora_A.weight, layer.lora_B.weight
        expected = x @ base.weight.T + base.bias + scale * (x @ a.T @ b.T)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_lora_a_is_kaiming_uniform_and_b_is_zero():
    """kaiming_uniform(a=sqrt(5)) on (r, in) has bound 1/sqrt(in)."""
    layer = LoRALinear(nn.Linear(400, 7), r=64, alpha=8)
    bound = 1 / math.sqrt(400)
    weight = layer.lora_A.weight
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.95 * bound  # uniform over the whole interval
    assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert torch.count_nonzero(layer.lora_B.weight) == 0


def test_merge_equals_unmerged_forward_and_unmerge_restores_weights():
    model, x = tiny_gpt(), tokens()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, TARGETS, r=4, alpha=8)
    randomise_adapter(model)
    unmerged = model(x)[0]
    merge_lora(model)
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for name, layer in model.named_modules():
        if isinstance(layer, LoRALinear):
            torch.testing.assert_close(
                layer.base_layer.weight, original[f"{name}.weight"], rtol=0, atol=1e-6
            )
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs():
    model, x = tiny_gpt(), tokens()
    apply_lora(model, TARGETS, r=4, alpha=8)
    randomise_adapter(model)
    expected = model(x)[0]
    merge_lora(model, unload=True)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    plain = tiny_gpt()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_merge_that_would_produce_nan_raises_and_keeps_weights():
    layer = LoRALinear(nn.Linear(4, 4), r=2, alpha=2)
    weight = layer.base_layer.weight.clone()
    with torch.no_grad():
        layer.lora_B.weight.fill_(float("inf"))
    with pytest.raises(TinygenError, match="NaN/Inf"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, weight) and not layer.merged


def test_only_adapter_parameters_change_after_an_optimiser_step():
    model, x = tiny_gpt(), tokens()
    report = apply_lora(model, ["qkv_proj", "fc"], r=2, alpha=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    _, loss = model(x, x)
    loss.backward()
    optim.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{n}.lora_{p}.weight" for n in report.wrapped for p in "AB"}


def test_report_counts_trainable_parameters_by_the_formula():
    model = tiny_gpt()
    total_before = sum(p.numel() for p in model.parameters())
    report = apply_lora(model, ["qkv_proj"], r=4, alpha=8)
    # each qkv_proj is (16 -> 48): r * (in + out) adapter weights, 2 layers
    assert report.trainable == 2 * 4 * (16 + 48)
    assert report.total == total_before + report.trainable
    assert report.wrapped == ["blocks.0.attn.qkv_proj", "blocks.1.attn.qkv_proj"]
    assert count_parameters(model) == (report.trainable, report.total)


def test_targets_by_suffix_and_by_regex_select_the_same_layers():
    by_suffix = apply_lora(tiny_gpt(), ["mlp.fc"], r=2).wrapped
    by_regex = apply_lora(tiny_gpt(), r"blocks\.\d+\.mlp\.fc", r=2).wrapped
    assert by_suffix == by_regex == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]
    all_linear = apply_lora(tiny_gpt(), "all-linear", r=2).wrapped
    assert "lm_head" not in all_linear and len(all_linear) == 8


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    model, x = tiny_gpt(), tokens()
    apply_lora(model, TARGETS, r=4, alpha=16, seed=3)
    randomise_adapter(model)
    expected = model(x)[0]
    save_adapter(model, tmp_path)
    fresh = tiny_gpt()
    report = load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x)[0], expected, rtol=0, atol=0)
    assert report.trainable == 0  # loaded for inference unless trainable=True
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 40_000


@pytest.mark.parametrize(
    ("targets", "r", "match"),
    [(["q_proj"], 4, "match no layer"), (["fc"], 0, "positive"), (["ln_1"], 2, "linear")],
)
def test_bad_lora_settings_give_clear_errors(targets, r, match):
    with pytest.raises(TinygenError, match=match):
        apply_lora(tiny_gpt(), targets, r=r)


def test_adapter_for_a_different_base_gives_a_clear_error(tmp_path):
    model = tiny_gpt()
    apply_lora(model, TARGETS, r=4)
    save_adapter(model, tmp_path)
    with pytest.raises(TinygenError, match="different base"):
        load_adapter(tiny_gpt(n_embd=32), tmp_path)
    with pytest.raises(TinygenError, match="different base"):
        load_adapter(tiny_gpt(n_layer=3), tmp_path)


def test_trainable_view_holds_only_the_adapter_and_shares_its_tensors():
    model, x = tiny_gpt(), tokens()
    report = apply_lora(model, ["fc"], r=2)
    view = TrainableView(model)
    assert sum(p.numel() for p in view.parameters()) == report.trainable
    assert torch.equal(view(x)[0], model(x)[0])
    view.eval()
    assert not model.training
    first = next(iter(view.params.values()))
    with torch.no_grad():
        first.add_(1.0)
    assert torch.equal(model.blocks[0].mlp.fc.lora_A.weight, first)
