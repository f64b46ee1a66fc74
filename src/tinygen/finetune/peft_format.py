"""Hugging Face PEFT's on-disk LoRA adapter format, read and written without PEFT.

An adapter directory holds two files:
  adapter_config.json        PEFT's `LoraConfig` as JSON (`peft_type: "LORA"`, r,
                             lora_alpha, target_modules, ...)
  adapter_model.safetensors  the tensors `base_model.model.<module path>.lora_A.weight`
                             (r, in) and `....lora_B.weight` (out, r), for every wrapped layer

so an adapter trained here loads with `peft.PeftModel.from_pretrained` on the equivalent
Hugging Face model, and one trained with PEFT loads here. tinygen adds one field PEFT
ignores: `tinygen.base_quantization` records how a QLoRA base (Dettmers et al. 2023) was
quantised to NF4, so loading can rebuild the same 4-bit base before attaching the adapter.

This module knows files and key names only; the layers and the maths are in `lora.py`.
Writes are atomic (through `tinygen.io`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora_config import LoraConfig
from tinygen.finetune.nf4 import Linear4bit, quantize_model
from tinygen.io import atomic_write, read_json, write_json

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps a LoraModel that wraps the base model

# PEFT options that change which layers are wrapped or what is trained; tinygen refuses
# an adapter that sets any of them rather than load something it does not compute.
UNSUPPORTED_PEFT_OPTIONS = (
    "use_dora",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "exclude_modules",
    "lora_bias",
)


def peft_key(module_name: str, part: str) -> str:
    """The safetensors key of one adapter matrix: `part` is "lora_A" or "lora_B"."""
    return f"{PEFT_PREFIX}{module_name}.{part}.weight"


def canonical_key(key: str) -> str:
    """`key` without an adapter name (`.lora_A.default.weight` -> `.lora_A.weight`), the
    form PEFT's `save_pretrained` writes and `peft_key` produces."""
    return key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def peft_adapter_config(
    config: LoraConfig,
    target_modules: str | list[str] | tuple[str, ...],
    *,
    base_model_name_or_path: str | None = None,
    base_quantization: dict | None = None,
) -> dict[str, Any]:
    """The `adapter_config.json` contents for `config`: PEFT's LoRA fields with PEFT's
    defaults for everything tinygen does not implement."""
    out: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora,
        "target_modules": target_modules
        if isinstance(target_modules, str)
        else list(target_modules),
        "bias": config.bias,
        "fan_in_fan_out": config.fan_in_fan_out,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    if base_quantization is not None:
        out["tinygen"] = {"base_quantization": base_quantization}
    return out


def lora_config_from_peft(adapter_config: dict[str, Any]) -> LoraConfig:
    """The `LoraConfig` an `adapter_config.json` (ours or PEFT's) describes, validated."""
    config = LoraConfig(
        r=adapter_config["r"],
        lora_alpha=adapter_config["lora_alpha"],
        lora_dropout=adapter_config.get("lora_dropout", 0.0),
        target_modules=adapter_config["target_modules"],
        bias=adapter_config.get("bias", "none"),
        use_rslora=adapter_config.get("use_rslora", False),
        fan_in_fan_out=adapter_config.get("fan_in_fan_out", False),
        modules_to_save=adapter_config.get("modules_to_save"),
    )
    config.validate()
    return config


def write_adapter(out_dir: str | Path, adapter_config: dict, tensors: dict[str, Tensor]) -> Path:
    """Write `adapter_model.safetensors` then `adapter_config.json` into `out_dir`, each
    atomically (a directory with a config always has its weights)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        out_dir / ADAPTER_WEIGHTS_FILE,
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),  # PEFT's metadata
    )
    write_json(out_dir / ADAPTER_CONFIG_FILE, adapter_config)
    return out_dir


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """Read `adapter_config.json` and refuse adapters tinygen cannot reproduce exactly
    (not LoRA, or PEFT options such as DoRA, per-layer ranks or trained biases)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise TinygenError(f"{path} does not exist; pass the directory of a saved LoRA adapter")
    config = read_json(path)
    if not isinstance(config, dict):
        raise TinygenError(f"{path} is not a JSON object; the adapter is corrupt")
    if config.get("peft_type", "LORA") != "LORA":
        raise TinygenError(f"{path} is a {config['peft_type']} adapter; only LoRA is supported")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        raise TinygenError(f"{path} lacks {missing}; it is not a complete LoRA adapter config")
    unsupported = [
        k for k in (*UNSUPPORTED_PEFT_OPTIONS, "fan_in_fan_out", "modules_to_save") if config.get(k)
    ]
    if unsupported or config.get("bias", "none") != "none":
        raise TinygenError(
            f"{path} uses PEFT options tinygen does not support "
            f"({unsupported or ['bias']}); retrain with plain LoRA"
        )
    return config


def read_adapter_weights(adapter_dir: str | Path) -> dict[str, Tensor]:
    """The adapter tensors of `adapter_model.safetensors`, under `canonical_key` names."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise TinygenError(f"{path} is missing; the adapter directory is incomplete")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise TinygenError(f"{path} is corrupt ({e}); save the adapter again") from e
    return {canonical_key(k): v for k, v in tensors.items()}


def base_quantization(model: nn.Module) -> dict[str, Any] | None:
    """How the model's base was quantised (QLoRA), for the adapter config; None when no
    layer is NF4. Names are the base layers' paths, without LoRA's `.base_layer`."""
    quantized = {
        n.removesuffix(".base_layer"): m
        for n, m in model.named_modules()
        if isinstance(m, Linear4bit)
    }
    if not quantized:
        return None
    first = next(iter(quantized.values()))
    return {
        "type": "nf4",
        "blocksize": first.blocksize,
        "double_quant": first.double_quant,
        "quantized_modules": list(quantized),
    }


def quantize_base_like(model: nn.Module, adapter_config: dict, adapter_dir: str | Path) -> None:
    """Quantise `model` to NF4 as the adapter's base was when it was trained (nothing when
    the adapter is plain LoRA or the model is already quantised)."""
    quant = (adapter_config.get("tinygen") or {}).get("base_quantization")
    if not quant or any(isinstance(m, Linear4bit) for m in model.modules()):
        return
    modules = quant.get("quantized_modules")
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    missing = sorted(set(modules or []) - set(linear))
    if missing:
        raise TinygenError(
            f"the adapter in {adapter_dir} was trained on a different base "
            f"(it quantised {missing[:3]}, which this model lacks)"
        )
    quantize_model(
        model, blocksize=quant["blocksize"], double_quant=quant["double_quant"], only=modules
    )
