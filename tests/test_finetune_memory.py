"""Parameter and memory accounting against built models and the published figures."""

from __future__ import annotations

import pytest
import torch

from tinygen.cli.main import main
from tinygen.errors import TinygenError
from tinygen.finetune.lora import apply_lora
from tinygen.finetune.memory import (
    BUILTIN_CONFIGS,
    llama_inventory,
    memory_report,
    module_inventory,
    nf4_nbytes,
    resolve_inventory,
    training_bytes,
    weight_bytes,
)
from tinygen.finetune.nf4 import quantize_model, quantize_nf4
from tinygen.models.gpt import GPT, GPTConfig


def test_llama_2_7b_counts_match_the_published_figures():
    inv = llama_inventory("llama-2-7b", BUILTIN_CONFIGS["llama-2-7b"])
    assert inv.total_params == 6_738_415_616  # the released checkpoint's parameter count
    qv = inv.lora_params(["q_proj", "v_proj"], 8)
    assert qv == 32 * 2 * 8 * (4096 + 4096)
    assert round(100 * qv / (inv.total_params + qv), 3) == 0.062
    all_linear = inv.lora_params("all-linear", 64)
    assert round(100 * all_linear / (inv.total_params + all_linear), 1) == 2.3
    assert weight_bytes(inv, "fp32") / 1e9 == pytest.approx(26.95, abs=0.01)


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-2-70b"])
def test_llama_formula_equals_a_model_built_on_the_meta_device(name):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**BUILTIN_CONFIGS[name])
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    built = module_inventory(model, name)
    formula = llama_inventory(name, BUILTIN_CONFIGS[name])
    assert built.total_params == formula.total_params
    assert [(x.name, x.numel) for x in built.linear] == [(x.name, x.numel) for x in formula.linear]


def test_nf4_byte_formula_equals_the_quantised_tensors():
    for numel in (64, 1001, 64 * 256 * 3 + 5):
        weight = torch.randn(numel)
        for dq in (False, True):
            assert nf4_nbytes(numel, 64, dq) == quantize_nf4(weight, double_quant=dq).nbytes


def test_qlora_estimate_equals_the_bytes_of_a_quantised_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=64))
    inv = module_inventory(model, "gpt")
    quantize_model(model, double_quant=True)
    apply_lora(model, ["qkv_proj"], r=4)
    stored = sum(b.numel() * b.element_size() for b in model.buffers())
    floats = sum(p.numel() * 4 for n, p in model.named_parameters() if ".lora_" not in n)
    adapter = sum(p.numel() * 4 for n, p in model.named_parameters() if ".lora_" in n)
    estimate = training_bytes(inv, "qlora-dq", ["qkv_proj"], 4, base_bytes=4)
    assert estimate["weights"] == stored + floats
    assert estimate["adapter"] == adapter
    assert estimate["adamw"] == 2 * adapter and estimate["gradients"] == adapter
    assert module_inventory(model, "q").total_params == inv.total_params


def test_qlora_fits_a_16gb_t4_and_lora_and_full_do_not():
    inv = resolve_inventory("llama-2-7b")
    totals = {
        m: sum(training_bytes(inv, m, ["q_proj", "v_proj"], 8).values()) / 1e9
        for m in ("full", "lora", "qlora-dq")
    }
    assert totals["full"] > 100 and totals["qlora-dq"] < 4 < 13 < totals["lora"] < 16


def test_memory_command_prints_the_llama_figures(capsys):
    assert main(["memory", "--model", "llama-2-7b"]) == 0
    out = capsys.readouterr().out
    assert "6.74B" in out and "0.062%" in out and "2.318%" in out
    assert "26.954 GB" in out


def test_memory_report_of_a_hf_config_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100)
    config.save_pretrained(tmp_path)
    inv = resolve_inventory(str(tmp_path))
    model = transformers.GPT2LMHeadModel(config)
    assert inv.total_params == sum(p.numel() for p in model.parameters())
    assert "parameters" in memory_report(inv, "all-linear", 4)


def test_unknown_model_gives_a_clear_error(capsys):
    with pytest.raises(TinygenError, match="llama-2-7b"):
        resolve_inventory("llama-9-1b")
    assert main(["memory", "--model", "llama-9-1b"]) == 2
