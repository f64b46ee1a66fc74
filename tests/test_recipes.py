"""The recipes floor and run loading: `fit` (the one Trainer construction), the one preset
format, `load_model(expect=)`, and the shims that keep the old import paths working."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from tinygen.errors import TinygenError
from tinygen.io import save_weights
from tinygen.models.gpt import GPT, GPTConfig
from tinygen.models.runs import load_model
from tinygen.recipes.common import Preset, fit
from tinygen.recipes.finetune_toy import PointsTask, ToyMLP, make_moons
from tinygen.train.config import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"

# old module -> its new home(s); every shim holds a docstring, re-exports and __all__ only
SHIMS = {
    "tinygen.train.runs": ("tinygen.models.runs",),
    "tinygen.data.text": ("tinygen.recipes.gpt",),
    "tinygen.models.seq2seq_task": ("tinygen.recipes.seq2seq",),
    "tinygen.models.clip_task": ("tinygen.recipes.clip",),
    "tinygen.models.clip_pictures": ("tinygen.recipes.clip_pictures",),
    "tinygen.models.evaluator": ("tinygen.models.shapes_evaluator", "tinygen.recipes.evaluator"),
    "tinygen.finetune.gpt": ("tinygen.recipes.finetune_gpt",),
    "tinygen.finetune.toy": ("tinygen.recipes.finetune_toy",),
    "tinygen.finetune.hf": ("tinygen.recipes.finetune_hf",),
}


def gpt_run(path: Path) -> Path:
    config = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps({"model_type": "gpt", "model": dataclasses.asdict(config)})
    )
    torch.manual_seed(0)
    save_weights(GPT(config), path / "model.safetensors")
    return path


def points_task() -> PointsTask:
    gen = torch.Generator().manual_seed(0)
    return PointsTask(ToyMLP(8), {s: make_moons(64, 0.1, gen) for s in ("train", "val")})


def tiny_train(**changes) -> TrainConfig:
    base = TrainConfig(
        max_iters=4, batch_size=8, eval_interval=2, eval_iters=1, log_interval=2, device="cpu"
    )
    return dataclasses.replace(base, **changes)


def test_load_model_refuses_another_kind_with_the_command_that_trains_it(tmp_path):
    run = gpt_run(tmp_path / "gpt")
    with pytest.raises(TinygenError) as caught:
        load_model(run, expect="seq2seq")
    message = str(caught.value)
    assert f"{run} holds a gpt model, not a seq2seq one" in message
    assert "`tinygen train seq2seq`" in message
    with pytest.raises(TinygenError, match="not a diffusion or noisy-classifier one") as caught:
        load_model(run, expect=("diffusion", "noisy-classifier"))
    assert "`tinygen train noisy-classifier`" in str(caught.value)
    model, config = load_model(run, expect=("seq2seq", "gpt"))
    assert isinstance(model, GPT) and config["model_type"] == "gpt" and not model.training


def test_ema_and_best_fall_back_to_the_last_weights(tmp_path):
    run = gpt_run(tmp_path / "gpt")
    torch.manual_seed(0)
    reference = GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8))
    for which in ("ema", "best", "last"):
        model, _ = load_model(run, which=which, expect="gpt")
        expected = reference.state_dict()
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), name


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_a_shim_only_reexports_its_new_home(old):
    path = SRC / (old.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    docstring, *body = tree.body
    assert isinstance(docstring, ast.Expr) and "Moved to" in docstring.value.value
    imports = [node for node in body if isinstance(node, ast.ImportFrom)]
    assert {node.module for node in imports} == set(SHIMS[old])
    rest = [node for node in body if not isinstance(node, ast.ImportFrom)]
    assert len(rest) == 1 and rest[0].targets[0].id == "__all__"
    module = importlib.import_module(old)
    homes = [importlib.import_module(new) for new in SHIMS[old]]
    for name in module.__all__:
        assert any(getattr(home, name, None) is getattr(module, name) for home in homes), name


def test_fit_announces_on_start_and_refuses_a_changed_model_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    started = []
    result = fit(
        points_task(),
        tiny_train(),
        out,
        {"model_type": "toy-mlp", "model": {"hidden": 8}},
        progress=False,
        announce=", two moons",
        on_start=started.append,
    )
    assert result.step == 4 and not result.interrupted and started == [out]
    assert "toy-mlp with 0.00M parameters, two moons -> " in capsys.readouterr().err
    with pytest.raises(TinygenError, match="hidden: saved 8, now 16"):
        fit(
            points_task(),
            tiny_train(max_iters=6),
            out,
            {"model_type": "toy-mlp", "model": {"hidden": 16}},
            resume=True,
            progress=False,
        )
    resumed = fit(
        points_task(),
        tiny_train(max_iters=6),
        out,
        {"model_type": "toy-mlp", "model": {"hidden": 8}},
        resume=True,
        progress=False,
        announce=False,
    )
    assert resumed.step == 6 and capsys.readouterr().err == ""


@pytest.mark.parametrize("family", ["gpt", "seq2seq", "clip", "evaluator"])
def test_every_family_names_its_presets_in_the_one_format(family):
    presets = importlib.import_module(f"tinygen.recipes.{family}").PRESETS
    assert presets
    for name, preset in presets.items():
        assert isinstance(preset, Preset) and dataclasses.is_dataclass(preset.model), name
        assert preset.description, name
        preset.train.validate()
