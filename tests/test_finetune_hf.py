"""The Hugging Face path on a tiny random Llama saved to disk in-process (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinygen.finetune.lora import LoRALinear, load_adapter
from tinygen.finetune.nf4 import Linear4bit
from tinygen.recipes.finetune_hf import HFTextTask, finetune_hf
from tinygen.train.config import TrainConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
tokenizers = pytest.importorskip("tokenizers")

TEXT = "the quick brown fox jumps over the lazy dog. to be or not to be, that is it.\n" * 150


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlamaForCausalLM and a character-level BPE tokenizer, saved like a hub model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>"])
    bpe.train_from_iterator([TEXT], trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hfdata") / "text.txt"
    path.write_text(TEXT)
    return path


def training() -> TrainConfig:
    return TrainConfig(
        max_iters=30,
        batch_size=8,
        learning_rate=1e-2,
        warmup_iters=0,
        eval_interval=30,
        eval_iters=2,
        log_interval=10,
        device="cpu",
    )


def val_loss(model, llama_dir: Path, data_file: Path) -> float:
    from tinygen.data.corpora import split_train_val
    from tinygen.recipes.finetune_gpt import fixed_val_loss

    tok = transformers.AutoTokenizer.from_pretrained(llama_dir)
    train, val = split_train_val(data_file.read_text())
    ids = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in (train, val)]
    return fixed_val_loss(model, HFTextTask(model, *ids, 32), 20, 8)


def test_lora_through_peft_learns_and_the_adapter_loads_in_peft(llama_dir, data_file, tmp_path):
    result = finetune_hf(
        str(llama_dir),
        data_file,
        tmp_path,
        method="lora",
        r=4,
        alpha=8,
        targets="all-linear",
        block_size=32,
        train=training(),
        progress=False,
    )
    assert result.val_loss_after < result.val_loss_before - 0.3
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    assert val_loss(reloaded, llama_dir, data_file) == pytest.approx(
        result.val_loss_after, abs=1e-4
    )


def test_cpu_qlora_uses_nf4_layers_whose_adapters_get_gradients(llama_dir, data_file, tmp_path):
    result = finetune_hf(
        str(llama_dir),
        data_file,
        tmp_path,
        method="qlora",
        r=4,
        alpha=8,
        targets="all-linear",
        block_size=32,
        train=training(),
        progress=False,
    )
    assert result.val_loss_after < result.val_loss_before - 0.3
    # our adapter, on a fresh float base (quantised by load_adapter), gives the same loss
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    load_adapter(model, tmp_path)
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 14
    assert val_loss(model, llama_dir, data_file) == pytest.approx(result.val_loss_after, abs=1e-4)
    # adapters receive non-zero gradients after an eval-mode no-grad forward (the trap)
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        model(input_ids=ids)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.lora_A.weight.requires_grad_(True)
    model(input_ids=ids).logits.sum().backward()
    assert all(layer.lora_A.weight.grad.abs().sum() > 0 for layer in layers)
