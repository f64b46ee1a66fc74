"""LoraConfig against PEFT's, the config's home on the layers, and the shared module surgery."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import tinygen.finetune as finetune_pkg
from tinygen.errors import TinygenError
from tinygen.finetune import nf4
from tinygen.finetune.lora import LoraConfig, LoRALinear, apply_lora, lora_layers, save_adapter
from tinygen.finetune.peft_format import lora_config_from_peft, peft_adapter_config
from tinygen.finetune.surgery import is_adapter_layer, replace_module, tied_linear_names

FINETUNE_DIR = Path(finetune_pkg.__file__).parent


class TinyLM(nn.Module):
    """An embedding, two blocks of two linear layers, and a head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"fc": nn.Linear(4, 6), "proj": nn.Linear(6, 4)}) for _ in range(2)
        )
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.note = "a plain attribute the user set"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + block["proj"](torch.relu(block["fc"](h)))
        return self.head(h)


def tiny_lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().eval()


def test_field_names_and_defaults_are_peft_s():
    peft = pytest.importorskip("peft")
    theirs = {f.name: f for f in dataclasses.fields(peft.LoraConfig)}
    ours = dataclasses.fields(LoraConfig)
    assert {f.name for f in ours} <= set(theirs), {f.name for f in ours} - set(theirs)
    for f in ours:
        assert f.default == theirs[f.name].default, f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_scaling_is_alpha_over_r_or_over_sqrt_r_with_rslora():
    assert LoraConfig(r=4, lora_alpha=16).scaling == 16 / 4
    assert LoraConfig(r=4, lora_alpha=16, use_rslora=True).scaling == 16 / math.sqrt(4)


@pytest.mark.parametrize(
    ("settings", "problem_and_fix"),
    [
        ({"r": 0}, "rank r must be a positive integer, got 0; use e.g. r=8"),
        ({"r": -2}, "rank r must be a positive integer, got -2"),
        ({"r": 2.5}, "rank r must be a positive integer, got 2.5"),
        ({"bias": "all"}, "bias='all' is not supported.*set bias='none'"),
        ({"bias": "lora_only"}, "bias='lora_only' is not supported.*set bias='none'"),
        ({"bias": "nonsense"}, "bias='nonsense' is not supported.*set bias='none'"),
        ({"lora_dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a finite number"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out=True is not supported.*=False"),
        ({"modules_to_save": ["head"]}, "modules_to_save=.*set modules_to_save=None"),
    ],
)
def test_validate_names_the_bad_field_and_the_fix(settings, problem_and_fix):
    config = LoraConfig(**settings)
    with pytest.raises(TinygenError, match=problem_and_fix):
        config.validate()


def test_apply_lora_rejects_a_bad_config_before_touching_the_model():
    model = tiny_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TinygenError, match="bias"):
        apply_lora(model, config=LoraConfig(r=2, target_modules=["fc"], bias="all"))
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _attribute_keys(module: nn.Module) -> dict[str, object]:
    """The module's own attributes: plain names, and the keys of its registries."""
    out: dict[str, object] = {}
    for key, value in vars(module).items():
        out[key] = sorted(value) if isinstance(value, dict) else type(value).__name__
    return out


def test_config_lives_on_every_lora_layer_and_the_model_gains_no_attributes():
    model = tiny_lm()
    before = {name: _attribute_keys(m) for name, m in model.named_modules()}
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["fc", "proj"])
    report = apply_lora(model, config=config)

    layers = lora_layers(model)
    assert (
        sorted(layers)
        == sorted(report.wrapped)
        == [
            "blocks.0.fc",
            "blocks.0.proj",
            "blocks.1.fc",
            "blocks.1.proj",
        ]
    )
    for layer in layers.values():
        assert layer.lora_config == config
        assert layer.scaling == 6 / 2
    # every module that was there and not wrapped keeps exactly its attributes and
    # submodule names (the wrapped ones are only values in their parent's _modules)
    for name, module in model.named_modules():
        if name in before and name not in layers:
            assert _attribute_keys(module) == before[name], name
    assert model.note == "a plain attribute the user set"


def test_keywords_and_config_build_the_same_adapter():
    by_keywords, by_config = tiny_lm(), tiny_lm()
    apply_lora(by_keywords, ["fc"], r=3, alpha=9, dropout=0.0, seed=1)
    apply_lora(by_config, config=LoraConfig(r=3, lora_alpha=9, target_modules=["fc"]), seed=1)
    a, b = by_keywords.state_dict(), by_config.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {layer.lora_config for layer in lora_layers(by_keywords).values()} == {
        layer.lora_config for layer in lora_layers(by_config).values()
    }
    # a config without targets takes them from the argument; both at once is refused
    apply_lora(tiny_lm(), ["fc"], config=LoraConfig(r=3))
    with pytest.raises(TinygenError, match="given twice"):
        apply_lora(tiny_lm(), ["fc"], r=4, config=LoraConfig(r=3))
    with pytest.raises(TinygenError, match="one place"):
        apply_lora(tiny_lm(), ["proj"], config=LoraConfig(target_modules=["fc"]))


def test_peft_reads_the_saved_config_as_the_layers_hold_it(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_lm()
    apply_lora(model, config=LoraConfig(r=2, lora_alpha=5, target_modules=["proj"]))
    save_adapter(model, tmp_path)
    theirs = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert (theirs.r, theirs.lora_alpha, theirs.lora_dropout, theirs.bias) == (2, 5, 0.0, "none")
    assert set(theirs.target_modules) == {"proj"}
    assert not hasattr(model, "lora_settings")


def test_a_peft_config_converts_to_an_equal_lora_config():
    peft = pytest.importorskip("peft")
    theirs = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["q", "v"])
    ours = lora_config_from_peft(theirs.to_dict())
    assert (ours.r, ours.lora_alpha, ours.lora_dropout) == (4, 16, 0.1)
    assert sorted(ours.target_modules) == ["q", "v"]
    assert lora_config_from_peft(peft_adapter_config(ours, list(ours.target_modules))) == ours


def test_replace_module_replaces_only_the_named_submodule():
    model = tiny_lm()
    untouched = model.blocks[0]["proj"]
    old = model.blocks[1]["fc"]
    new = nn.Linear(4, 6)
    assert replace_module(model, "blocks.1.fc", new) is old
    assert model.get_submodule("blocks.1.fc") is new
    assert model.blocks[0]["proj"] is untouched
    replace_module(model, "blocks.0", nn.Identity())  # an entry of a ModuleList
    assert isinstance(model.blocks[0], nn.Identity) and len(model.blocks) == 2
    with pytest.raises(TinygenError, match="no submodule"):
        replace_module(model, "blocks.1.missing", nn.Identity())
    with pytest.raises(TinygenError, match="no submodule"):
        replace_module(model, "nowhere.fc", nn.Identity())


def test_tied_linear_names_finds_the_tied_head_only():
    model = tiny_lm()
    assert model.head.weight is model.embed.weight  # the truth, by construction
    assert tied_linear_names(model) == {"head"}
    assert nf4._tied_linear_names is tied_linear_names  # the old name still works
    model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    assert tied_linear_names(model) == set()


def test_a_lora_layer_is_an_adapter_layer_and_nf4_recognises_it():
    assert is_adapter_layer(LoRALinear(nn.Linear(4, 4), r=2))
    assert not is_adapter_layer(nn.Linear(4, 4))
    model = tiny_lm()
    apply_lora(model, ["fc"], r=2)
    with pytest.raises(TinygenError, match="before applying LoRA"):
        nf4.quantize_model(model)


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_nf4_and_the_surgery_do_not_import_lora():
    for name in ("nf4.py", "surgery.py", "peft_format.py", "lora_config.py"):
        imported = _imported_modules(FINETUNE_DIR / name)
        assert not [m for m in imported if m.endswith((".lora", "finetune.lora"))], name
    assert not [m for m in _imported_modules(FINETUNE_DIR / "surgery.py") if "nf4" in m]


def test_lora_files_import_nothing_from_train():
    for name in ("lora.py", "nf4.py", "surgery.py", "peft_format.py", "lora_config.py"):
        imported = _imported_modules(FINETUNE_DIR / name)
        assert not [m for m in imported if m.startswith(("tinygen.train", "..train"))], name
