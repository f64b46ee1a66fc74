"""Module surgery shared by LoRA and NF4: swap a submodule by name, find tied linear
layers, and recognise an adapter wrapper.

LoRA (Hu et al. 2021) wraps chosen linear layers of a frozen model; QLoRA (Dettmers et
al. 2023) first swaps those layers for 4-bit ones. Both edit the user's model in place and
must leave it with nothing but replaced submodules, so the edits live here, in one place,
below both `lora.py` and `nf4.py`. The `AdapterLayer` marker lets `nf4.py` notice that LoRA
already sits on a model without importing `lora.py` (which imports `nf4.py`).
"""

from __future__ import annotations

from torch import nn

from tinygen.errors import TinygenError


class AdapterLayer(nn.Module):
    """Base class of every layer that wraps a frozen `base_layer` with a trainable update
    (today `LoRALinear`). Subclasses set `self.base_layer`; surgery code checks for this
    class instead of importing the subclass."""

    base_layer: nn.Module


def is_adapter_layer(module: nn.Module) -> bool:
    """Whether `module` is an adapter wrapper (a LoRA layer) around a base layer."""
    return isinstance(module, AdapterLayer)


def has_adapter_layers(model: nn.Module) -> bool:
    """Whether any submodule of `model` is an adapter wrapper."""
    return any(is_adapter_layer(m) for m in model.modules())


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put `new_module` at the dotted path `name` of `model` (e.g. "blocks.0.attn.qkv_proj",
    "layers.3" inside a ModuleList) and return the module it replaces. Only that one entry
    of the parent's submodules changes; no attribute is added anywhere."""
    if not name:
        raise TinygenError("cannot replace the model itself; name one of its submodules")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError as e:
        raise TinygenError(f"the model has no submodule {parent_name!r} (from {name!r})") from e
    old = parent._modules.get(child)
    if old is None:
        children = sorted(parent._modules)
        raise TinygenError(
            f"the model has no submodule {name!r}; {parent_name or 'the model'} has {children}"
        )
    setattr(parent, child, new_module)
    return old


def tied_linear_names(model: nn.Module) -> set[str]:
    """Names of linear layers whose weight is shared with another module (GPT's lm_head
    tied to the token embedding). Quantising such a layer would silently untie or corrupt
    both, and LoRA's "all-linear" leaves it out like any output head."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and len(owners.get(id(module.weight), [])) > 1
    }
