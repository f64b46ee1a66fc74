"""End-to-end fine-tuning: the toy, our GPT four ways, the CLI (tiny configs, seconds)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from tinygen.cli.main import main
from tinygen.data.tokenizers import CharTokenizer
from tinygen.finetune.lora import load_adapter
from tinygen.finetune.nf4 import Linear4bit
from tinygen.models.gpt import GPT, GPTConfig
from tinygen.recipes.finetune_gpt import FinetuneConfig, finetune_gpt, fixed_val_loss
from tinygen.recipes.finetune_toy import ToyConfig, run_toy
from tinygen.train import checkpoint as ckpt
from tinygen.train.config import TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run fastest on one thread, and the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random GPT saved as a run directory, with a 40-character vocabulary."""
    run = tmp_path_factory.mktemp("base")
    tokenizer = CharTokenizer(list("\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEIOT"))
    tokenizer.save(run)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64
    )
    model = GPT(config)
    ckpt.write_json(run / "config.json", {"model_type": "gpt", "model": config.__dict__})
    ckpt.save_weights(model, run / "model.safetensors")
    ckpt.save_weights(model, run / "best.safetensors")
    return run


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    line = "to be, or not to be: that is the question. whether tis nobler in the mind!\n"
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(line * 200)
    return path


def short_training(**overrides) -> TrainConfig:
    values = dict(
        max_iters=40,
        batch_size=8,
        learning_rate=3e-3,
        warmup_iters=0,
        eval_interval=40,
        eval_iters=2,
        log_interval=10,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def frozen_base_loss(base_run: Path, text_file: Path, adapter: Path | None) -> float:
    """The fine-tuned model rebuilt from the base run plus the saved adapter."""
    from tinygen.data.corpora import load_corpus, split_train_val
    from tinygen.models.runs import load_model
    from tinygen.recipes.gpt import TextTask, encode_corpus

    model, _ = load_model(base_run)
    if adapter is not None:
        load_adapter(model, adapter)
    tokenizer = CharTokenizer.load(base_run)
    train, val = split_train_val(load_corpus(str(text_file)))
    task = TextTask(model, encode_corpus(train, tokenizer), encode_corpus(val, tokenizer), 32)
    return fixed_val_loss(model, task, 5, 8)


@pytest.mark.parametrize(
    ("method", "double_quant"), [("lora", True), ("qlora", True), ("qlora", False)]
)
def test_adapter_finetune_lowers_val_loss_and_saves_only_the_adapter(
    base_run, text_file, tmp_path, method, double_quant
):
    base_bytes = (base_run / "best.safetensors").read_bytes()
    ft = FinetuneConfig(
        method=method, r=4, alpha=8, data=str(text_file), eval_batches=5, double_quant=double_quant
    )
    result = finetune_gpt(base_run, tmp_path, ft, short_training(), progress=False)
    assert result.val_loss_after < result.val_loss_before - 0.3
    assert (base_run / "best.safetensors").read_bytes() == base_bytes  # the base is untouched
    assert result.adapter_bytes < 60_000
    assert all(f.stat().st_size < 200_000 for f in tmp_path.iterdir())  # no copy of the model
    # the adapter alone, on the base run, reproduces the fine-tuned model's loss
    assert frozen_base_loss(base_run, text_file, tmp_path) == pytest.approx(
        result.val_loss_after, abs=1e-5
    )
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    quant = (config.get("tinygen") or {}).get("base_quantization")
    assert (quant is not None) == (method == "qlora")
    if quant:
        assert quant["double_quant"] == double_quant


def test_full_finetune_writes_a_loadable_gpt_run(base_run, text_file, tmp_path):
    from tinygen.models.runs import load_model

    ft = FinetuneConfig(method="full", data=str(text_file), eval_batches=5)
    result = finetune_gpt(
        base_run, tmp_path, ft, short_training(learning_rate=1e-3), progress=False
    )
    assert result.val_loss_after < result.val_loss_before - 0.3
    assert result.trainable == result.total
    model, _ = load_model(tmp_path)
    assert isinstance(model, GPT)
    assert CharTokenizer.load(tmp_path).chars == CharTokenizer.load(base_run).chars


def test_characters_outside_the_base_vocabulary_are_dropped_with_a_warning(base_run, tmp_path):
    data = tmp_path / "odd.txt"
    data.write_text("the question is whether \u20ac or \u00e9 matter.\n" * 150)
    ft = FinetuneConfig(method="lora", r=2, data=str(data), eval_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune_gpt(base_run, tmp_path / "out", ft, short_training(max_iters=2), progress=False)
    messages = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert messages and "dropped 300 characters" in messages[0]


def test_cli_finetune_then_sample_with_adapter_merged_and_not(
    base_run, text_file, tmp_path, capsys
):
    out = tmp_path / "adapter"
    code = main(
        [
            "finetune",
            "gpt",
            "--base",
            str(base_run),
            "--out",
            str(out),
            "--method",
            "qlora",
            "--r",
            "4",
            "--data",
            str(text_file),
            "--max-iters",
            "20",
            "--eval-interval",
            "20",
            "--eval-iters",
            "2",
            "--eval-batches",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    capsys.readouterr()
    samples = []
    for merge in ([], ["--merge"]):
        assert (
            main(
                [
                    "sample",
                    "gpt",
                    "--run",
                    str(base_run),
                    "--adapter",
                    str(out),
                    "--temperature",
                    "0",
                    "--max-new-tokens",
                    "40",
                    "--prompt",
                    "to be",
                    "--device",
                    "cpu",
                    *merge,
                ]
            )
            == 0
        )
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and len(samples[0]) > 40


def test_cli_bad_method_and_bad_rank_give_clear_errors(base_run, text_file, tmp_path, capsys):
    for flags, message in ((["--method", "dora"], "unknown --method"), (["--r", "0"], "--r")):
        code = main(
            [
                "finetune",
                "gpt",
                "--base",
                str(base_run),
                "--out",
                str(tmp_path),
                "--data",
                str(text_file),
                *flags,
            ]
        )
        assert code == 2
        assert message in capsys.readouterr().err


def test_toy_lora_recovers_the_rotated_task_with_a_small_share_of_parameters(tmp_path):
    config = ToyConfig(n_points=1000, hidden=32, base_steps=300, lora_steps=200)
    result = run_toy(config, tmp_path)
    assert result.base_acc_original > 0.95
    assert result.base_acc_new < 0.8  # the world changed: the frozen model fails
    assert result.lora_acc_new > 0.95
    assert result.trainable / result.total < 0.15
    assert result.picture.is_file() and result.picture.stat().st_size > 10_000


def test_qlora_layers_are_4bit_after_loading_the_adapter(base_run, text_file, tmp_path):
    from tinygen.models.runs import load_model

    ft = FinetuneConfig(method="qlora", r=2, data=str(text_file), eval_batches=2)
    finetune_gpt(base_run, tmp_path, ft, short_training(max_iters=2), progress=False)
    model, _ = load_model(base_run)
    load_adapter(model, tmp_path)
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 8
    assert model.lm_head.weight is model.wte.weight
