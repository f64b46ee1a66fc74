"""LoRA: low-rank adaptation of frozen linear layers (Hu et al. 2021), PEFT-compatible.

A wrapped layer computes h = W0 x + (alpha / r) * B A dropout(x) (paper eq. 3) with W0
frozen, A (r, in) Kaiming-uniform and B (out, r) zero, so training starts from the
unchanged model. rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead.

The settings are a `LoraConfig` (PEFT's field names), held by every `LoRALinear` as
`layer.lora_config`; `apply_lora` changes the user's model only by replacing submodules.
Adapters are saved in Hugging Face PEFT's on-disk format (`peft_format.py`), so an adapter
trained here loads with `peft.PeftModel.from_pretrained` on the equivalent Hugging Face
model, and a PEFT adapter loads here with `load_adapter`. A QLoRA adapter records how its
base was quantised, and `load_adapter` quantises the base the same way before attaching it.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora_config import LoraConfig, resolve_config
from tinygen.finetune.nf4 import Linear4bit, quantize_model  # noqa: F401 - old import path
from tinygen.finetune.peft_format import (  # noqa: F401 - the file names lived here before
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    PEFT_PREFIX,
    base_quantization,
    lora_config_from_peft,
    peft_adapter_config,
    peft_key,
    quantize_base_like,
    read_adapter_config,
    read_adapter_weights,
    write_adapter,
)
from tinygen.finetune.surgery import (
    AdapterLayer,
    has_adapter_layers,
    replace_module,
    tied_linear_names,
)


class LoRALinear(AdapterLayer):
    """A frozen linear layer (`nn.Linear` or NF4 `Linear4bit`) plus a trainable low-rank
    update. `merge()` folds the update into the base weight for inference at no extra
    cost; `unmerge()` takes it out again.

    Settings come from `config` or from r / alpha / dropout / use_rslora (defaults 8, 8,
    0, False: PEFT's), not both; they are kept as `self.lora_config`."""

    def __init__(
        self,
        base_layer: nn.Module,
        r: int | None = None,
        alpha: float | None = None,
        dropout: float | None = None,
        *,
        use_rslora: bool | None = None,
        config: LoraConfig | None = None,
    ) -> None:
        super().__init__()
        config = resolve_config(
            config, r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora
        )
        self.lora_config = config
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        device = next(iter([*base_layer.parameters(), *base_layer.buffers()])).device
        self.lora_dropout = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        r = config.r
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device)
        self.merged = False
        self._quantized_base: Linear4bit | None = None  # kept while merged into a float copy
        self.reset_lora_parameters()

    @property
    def r(self) -> int:
        return self.lora_config.r

    @property
    def alpha(self) -> float:
        return self.lora_config.lora_alpha

    @property
    def use_rslora(self) -> bool:
        return self.lora_config.use_rslora

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA (see `LoraConfig.scaling`)."""
        return self.lora_config.scaling

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)) as nn.Linear's default, B = 0 (paper sec. 4.1)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """The update the adapter adds to W0: scaling * B @ A, (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        lora = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return result + (lora * self.scaling).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scaling * B A. A 4-bit base is replaced by a float copy of its
        dequantised weight (re-quantising would lose the update); `unmerge` restores it."""
        if self.merged:
            return
        delta = self.delta_weight()
        if isinstance(self.base_layer, Linear4bit):
            self._quantized_base = self.base_layer
            self.base_layer = self.base_layer.to_linear()
        merged = self.base_layer.weight + delta.to(self.base_layer.weight.dtype)
        if not torch.isfinite(merged).all():
            if self._quantized_base is not None:
                self.base_layer, self._quantized_base = self._quantized_base, None
            raise TinygenError(
                "merging the LoRA adapter would put NaN/Inf into the base weights; the "
                "adapter is broken (lower the learning rate and retrain it)"
            )
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` (W <- W - scaling * B A, or back to the 4-bit base)."""
        if not self.merged:
            return
        if self._quantized_base is not None:
            self.base_layer, self._quantized_base = self._quantized_base, None
        else:
            delta = self.delta_weight().to(self.base_layer.weight.dtype)
            self.base_layer.weight.sub_(delta)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


@dataclass
class LoRAReport:
    """What `apply_lora` did: the wrapped module names and the parameter counts."""

    wrapped: list[str]
    trainable: int
    total: int

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total

    def __str__(self) -> str:
        return (
            f"LoRA on {len(self.wrapped)} layers: trainable params {self.trainable:,} of "
            f"{self.total:,} ({100 * self.trainable_share:.3f}%)"
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors count once and an NF4 weight
    counts as the number of weights it stores."""
    params = list(model.parameters())  # deduplicated by nn.Module
    trainable = sum(p.numel() for p in params if p.requires_grad)
    quantized = sum(m.quantized_numel for m in model.modules() if isinstance(m, Linear4bit))
    return trainable, sum(p.numel() for p in params) + quantized


def matches_target(name: str, targets: str | list[str] | tuple[str, ...]) -> bool:
    """PEFT's `target_modules` rule: a string is a regex that must match the whole module
    name; a list matches a name equal to an entry or ending with `.entry`."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Linear4bit))


def find_targets(
    model: nn.Module, target_modules: str | list[str] | tuple[str, ...] | None
) -> list[str]:
    """Names of the linear layers `target_modules` selects ("all-linear": every linear
    layer except the output head, as PEFT does)."""
    if target_modules == "all-linear":
        excluded = tied_linear_names(model)
        return [
            n
            for n, m in model.named_modules()
            if _is_linear(m)
            and n not in excluded
            and n.rpartition(".")[2] not in ("lm_head", "output")
        ]
    if not target_modules:
        raise TinygenError(
            "no LoRA target modules given; pass target_modules, e.g. ['qkv_proj', 'out_proj'] "
            "(--targets qkv_proj,out_proj)"
        )
    names = [n for n, m in model.named_modules() if matches_target(n, target_modules)]
    if isinstance(target_modules, (list, tuple)):
        missing = [t for t in target_modules if not any(matches_target(n, [t]) for n in names)]
        if missing:
            linear = sorted(
                {n.rpartition(".")[2] for n, m in model.named_modules() if _is_linear(m)}
            )
            raise TinygenError(
                f"LoRA target modules {missing} match no layer of the model; "
                f"its linear layers are named {linear}"
            )
    if not names:
        raise TinygenError(f"LoRA target pattern {target_modules!r} matches no module")
    not_linear = [n for n in names if not _is_linear(model.get_submodule(n))]
    if not_linear:
        raise TinygenError(
            f"LoRA can only wrap linear layers, but {not_linear[:3]} are not; "
            "choose other --targets"
        )
    return names


def apply_lora(
    model: nn.Module,
    target_modules: str | list[str] | None = None,
    r: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    *,
    use_rslora: bool | None = None,
    seed: int | None = None,
    config: LoraConfig | None = None,
) -> LoRAReport:
    """Wrap the selected linear layers of `model` in `LoRALinear` (in place), freeze every
    other parameter, and report trainable/total parameters. `seed` fixes the A init.

    Settings come from `config` or from the keywords (defaults r=8, alpha=8, dropout=0),
    not both; `target_modules` may be given beside a config without targets. Every new
    layer holds the same config; the model itself gains no attribute."""
    config = resolve_config(
        config,
        target_modules=target_modules,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=use_rslora,
    )
    if has_adapter_layers(model):
        raise TinygenError("the model already has LoRA layers; apply_lora once per model")
    names = find_targets(model, config.target_modules)
    model.requires_grad_(False)
    fork = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with fork:
        if seed is not None:
            torch.manual_seed(seed)
        for name in names:
            replace_module(model, name, LoRALinear(model.get_submodule(name), config=config))
    trainable, total = count_parameters(model)
    return LoRAReport(names, trainable, total)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module, *, unload: bool = False) -> nn.Module:
    """Fold every adapter into its base weight (the merged model runs at the base model's
    speed). With `unload`, the wrappers are replaced by their merged base layers."""
    layers = lora_layers(model)
    if not layers:
        raise TinygenError("the model has no LoRA layers to merge; load an adapter first")
    for name, layer in layers.items():
        layer.merge()
        if unload:
            replace_module(model, name, layer.base_layer)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors under PEFT's key names."""
    out = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            out[peft_key(name, part)] = getattr(layer, part).weight.detach().contiguous().cpu()
    return out


def save_adapter(
    model: nn.Module, out_dir: str | Path, *, base_model_name_or_path: str | None = None
) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (PEFT's format) to out_dir.
    The config is the one the LoRA layers hold; when they name no common targets (layers
    built by hand), `target_modules` lists the wrapped layers by their full names."""
    layers = lora_layers(model)
    if not layers:
        raise TinygenError("the model has no LoRA adapter to save; call apply_lora first")
    if any(layer.merged for layer in layers.values()):
        raise TinygenError("the adapter is merged into the weights; unmerge_lora before saving")
    configs = [layer.lora_config for layer in layers.values()]
    settings = {replace(c, target_modules=None) for c in configs}
    if len(settings) > 1:
        raise TinygenError(
            f"the LoRA layers have {len(settings)} different settings; one "
            "adapter_config.json holds one config, so wrap the model with one apply_lora call"
        )
    targets = {c.target_modules for c in configs}
    common = targets.pop() if len(targets) == 1 else None
    adapter_config = peft_adapter_config(
        configs[0],
        common if common is not None else list(layers),
        base_model_name_or_path=base_model_name_or_path,
        base_quantization=base_quantization(model),
    )
    return write_adapter(out_dir, adapter_config, adapter_state_dict(model))


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, *, trainable: bool = False
) -> LoRAReport:
    """Attach the adapter saved in `adapter_dir` (by tinygen or PEFT) to the base `model`,
    in place. A QLoRA adapter first quantises the base to NF4 as it was trained."""
    adapter_config = read_adapter_config(adapter_dir)
    found = read_adapter_weights(adapter_dir)
    quantize_base_like(model, adapter_config, adapter_dir)
    report = apply_lora(model, config=lora_config_from_peft(adapter_config))
    expected = set(adapter_state_dict(model))
    if set(found) != expected:
        extra, absent = sorted(set(found) - expected), sorted(expected - set(found))
        raise TinygenError(
            f"the adapter in {adapter_dir} was trained on a different base "
            f"model (layers only in the adapter: {extra[:3]}; layers it lacks: "
            f"{absent[:3]}); load it onto the model it was trained from"
        )
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            value = found[peft_key(name, part)]
            param = getattr(layer, part).weight
            if value.shape != param.shape:
                raise TinygenError(
                    f"the adapter in {adapter_dir} was trained on a different base model: "
                    f"{name}.{part} is {tuple(value.shape)} there but {tuple(param.shape)} here"
                )
            with torch.no_grad():
                param.copy_(value.to(param.dtype))
            param.requires_grad_(trainable)
    report.trainable = count_parameters(model)[0]
    return report


class TrainableView(nn.Module):
    """The trainable parameters of `model` (the adapter) as a module of their own that
    runs the whole model. Handing this to the Trainer makes its checkpoints, optimiser
    and resume cover the adapter only (kilobytes) while the frozen base stays outside."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.params = nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
        )
        if not len(self.params):
            raise TinygenError("the model has no trainable parameters; apply LoRA first")
        object.__setattr__(self, "full_model", model)  # not a submodule: not saved or moved

    def train(self, mode: bool = True) -> TrainableView:
        self.full_model.train(mode)
        return super().train(mode)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return self.full_model(*args, **kwargs)
