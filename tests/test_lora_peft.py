"""Interchange with Hugging Face PEFT on a tiny random Llama built in-process (no hub)."""

from __future__ import annotations

import json

import pytest
import torch

from tinygen.finetune.lora import LoRALinear, apply_lora, load_adapter, save_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def input_ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path):
    ours = tiny_llama()
    apply_lora(ours, TARGETS, r=4, alpha=8, seed=1)
    gen = torch.Generator().manual_seed(2)
    for module in ours.modules():
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=gen))
    with torch.no_grad():
        expected = ours(input_ids()).logits
    save_adapter(ours, tmp_path)

    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    with torch.no_grad():
        logits = theirs(input_ids()).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        base_logits = tiny_llama()(input_ids()).logits
    assert (logits - base_logits).abs().max() > 1e-2  # the adapter really changes the model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_a_peft_adapter_loads_here_with_equal_logits(tmp_path, use_rslora):
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, use_rslora=use_rslora)
    theirs = peft.get_peft_model(tiny_llama(), config)
    gen = torch.Generator().manual_seed(3)
    for name, param in theirs.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=gen))
    theirs.eval()
    with torch.no_grad():
        expected = theirs(input_ids()).logits
    theirs.save_pretrained(tmp_path)

    ours = tiny_llama()
    report = load_adapter(ours, tmp_path)
    assert len(report.wrapped) == 2 * len(TARGETS)
    with torch.no_grad():
        logits = ours(input_ids()).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_saved_config_and_keys_match_peft_conventions(tmp_path):
    ours = tiny_llama()
    apply_lora(ours, TARGETS, r=4, alpha=8)
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
    )
    theirs.save_pretrained(tmp_path / "theirs")
    from safetensors.torch import load_file

    ours_keys = set(load_file(str(tmp_path / "ours/adapter_model.safetensors")))
    theirs_keys = set(load_file(str(tmp_path / "theirs/adapter_model.safetensors")))
    assert ours_keys == theirs_keys
    ours_config = json.loads((tmp_path / "ours/adapter_config.json").read_text())
    theirs_config = json.loads((tmp_path / "theirs/adapter_config.json").read_text())
    for field in ("peft_type", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora"):
        assert ours_config[field] == theirs_config[field], field
    assert sorted(ours_config["target_modules"]) == sorted(theirs_config["target_modules"])
