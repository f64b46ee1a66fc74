"""Parameter and memory accounting: why LoRA trains 0.06% of LLaMA-2-7B and why QLoRA
fits it on one 16 GB GPU.

A model is reduced to an inventory: its linear layers (what LoRA adapts and NF4
quantises) and the count of every other parameter (embeddings, norms, biases, a tied or
unquantised output head). From it follow exact weight bytes per storage format and the
training memory of full fine-tuning, LoRA and QLoRA: weights + gradients + AdamW's two
states + the adapter. Activations are left out: they depend on batch size, sequence length
and checkpointing, not on the method.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tinygen.errors import TinygenError
from tinygen.finetune.lora import LoRALinear, matches_target
from tinygen.finetune.nf4 import ABSMAX_BLOCKSIZE, Linear4bit

# Published architectures (Touvron et al. 2023, table 1 / the released config.json files).
BUILTIN_CONFIGS: dict[str, dict] = {
    "llama-2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "llama-2-13b": dict(
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "llama-2-70b": dict(
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
}
GB = 1e9


@dataclass
class LinearShape:
    name: str
    in_features: int
    out_features: int

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass
class Inventory:
    """A model's linear layers (weights only) and the count of all its other parameters."""

    name: str
    linear: list[LinearShape]
    other_params: int
    default_targets: tuple[str, ...] = ()

    @property
    def linear_params(self) -> int:
        return sum(layer.numel for layer in self.linear)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, targets: str | list[str], r: int) -> int:
        """Adapter size: r * (in + out) for every targeted linear layer."""
        chosen = self.targeted(targets)
        if not chosen:
            raise TinygenError(f"LoRA targets {targets!r} match no linear layer of {self.name}")
        return sum(r * (layer.in_features + layer.out_features) for layer in chosen)

    def targeted(self, targets: str | list[str]) -> list[LinearShape]:
        if targets == "all-linear":
            return self.linear
        return [layer for layer in self.linear if matches_target(layer.name, targets)]


def llama_inventory(name: str, config: dict) -> Inventory:
    """The LLaMA architecture counted from its config: attention q,k,v,o (k and v shrink
    with grouped-query attention), the SwiGLU MLP gate/up/down, two RMSNorms per layer, a
    final norm, the embedding and an untied output head (never quantised)."""
    _check_llama_config(name, config)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_dim = config.get("num_key_value_heads") or heads
    kv_dim = kv_dim * config.get("head_dim", hidden // heads)
    linear = []
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}"
        for proj, n_in, n_out in (
            ("self_attn.q_proj", hidden, hidden),
            ("self_attn.k_proj", hidden, kv_dim),
            ("self_attn.v_proj", hidden, kv_dim),
            ("self_attn.o_proj", hidden, hidden),
            ("mlp.gate_proj", hidden, inter),
            ("mlp.up_proj", hidden, inter),
            ("mlp.down_proj", inter, hidden),
        ):
            linear.append(LinearShape(f"{prefix}.{proj}", n_in, n_out))
    embeddings = config["vocab_size"] * hidden
    head = 0 if config.get("tie_word_embeddings", False) else embeddings
    norms = (2 * config["num_hidden_layers"] + 1) * hidden
    return Inventory(name, linear, embeddings + head + norms, ("q_proj", "v_proj"))


LLAMA_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
)


def _check_llama_config(name: str, config: dict) -> None:
    """The sizes `llama_inventory` reads are there and positive integers."""
    for key in (*LLAMA_KEYS, "num_key_value_heads", "head_dim"):
        value = config.get(key)
        if value is None and key not in LLAMA_KEYS:
            continue
        if value is None:
            raise TinygenError(
                f"{name} has no {key!r}; a LLaMA-family config.json needs {', '.join(LLAMA_KEYS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TinygenError(f"{name}: {key} is {value!r}, not a positive integer")


def module_inventory(model: nn.Module, name: str, default_targets=("qkv_proj",)) -> Inventory:
    """Inventory of a built model (real or on the meta device). Output heads and linear
    layers whose weight is tied to another module count as other parameters."""
    from tinygen.finetune.nf4 import _tied_linear_names

    tied = _tied_linear_names(model)
    linear = []
    for module_name, module in model.named_modules():
        if isinstance(module, LoRALinear) or module_name.endswith((".lora_A", ".lora_B")):
            continue
        if isinstance(module, (nn.Linear, Linear4bit)):
            shape = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D" and module.weight.dim() == 2:
            shape = tuple(module.weight.shape)  # transformers' GPT-2 layer: weight (in, out)
        else:
            continue
        base = module_name.removesuffix(".base_layer")
        if base in tied or base.rpartition(".")[2] in ("lm_head", "output"):
            continue
        linear.append(LinearShape(base, *shape))
    total = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    total += sum(m.quantized_numel for m in model.modules() if isinstance(m, Linear4bit))
    linear_numel = sum(layer.numel for layer in linear)
    return Inventory(name, linear, total - linear_numel, tuple(default_targets))


def hf_config_inventory(config_path: str | Path) -> Inventory:
    """Inventory from a Hugging Face config.json (or a model directory holding one):
    LLaMA-family configs are counted directly; others are built on the meta device with
    transformers (no weights are allocated or downloaded)."""
    path = Path(config_path)
    path = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TinygenError(f"cannot read the Hugging Face config {path} ({e})") from e
    if not isinstance(config, dict):
        raise TinygenError(
            f"{path} holds a JSON {type(config).__name__}, not an object; a Hugging Face "
            "config.json is one object of settings (hidden_size, num_hidden_layers, ...)"
        )
    if config.get("model_type") in ("llama", "mistral"):
        return llama_inventory(str(config_path), config)
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise TinygenError(
            "counting this architecture needs transformers: pip install 'tinygen[hf]'"
        ) from e
    try:
        hf_config = AutoConfig.from_pretrained(str(path.parent))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise TinygenError(f"transformers cannot build a model from {path}: {e}") from e
    return module_inventory(model, str(config_path), ("q_proj", "v_proj"))


def gpt2_inventory(name: str) -> Inventory:
    """A published GPT-2 size (gpt2 ... gpt2-xl) counted from our GPT built from its config
    on the meta device: the model `GPT.from_pretrained` loads, with no weights allocated.
    Its head is tied to the token embedding, so it counts once, as an embedding."""
    from tinygen.models.convert.gpt2 import GPT2_CONFIGS, gpt_config_from_hf
    from tinygen.models.gpt import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(**gpt_config_from_hf(GPT2_CONFIGS[name])))
    return module_inventory(model, name)


def run_inventory(run_dir: str | Path) -> Inventory:
    """Inventory of a tinygen run (its config.json rebuilds the model; weights not read)."""
    from tinygen.models.registry import build_model
    from tinygen.models.runs import load_run_config

    config = load_run_config(run_dir)
    model = build_model(config["model_type"], config["model"], run=run_dir)
    return module_inventory(model, str(run_dir))


def resolve_inventory(model: str) -> Inventory:
    """`model` is a built-in name (llama-2-7b, gpt2-xl), a HF config.json / model dir, or a
    run dir."""
    from tinygen.models.convert.gpt2 import GPT2_CONFIGS

    if model in BUILTIN_CONFIGS:
        return llama_inventory(model, BUILTIN_CONFIGS[model])
    if model in GPT2_CONFIGS:
        return gpt2_inventory(model)
    path = Path(model)
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise TinygenError(f"{path / 'config.json'} is not valid JSON ({e})") from e
        if isinstance(config, dict) and isinstance(config.get("model"), dict):  # a tinygen run
            return run_inventory(path)
        return hf_config_inventory(path)
    if path.is_file() and path.suffix == ".json":
        return hf_config_inventory(path)
    raise TinygenError(
        f"unknown model {model!r}: pass one of {sorted(BUILTIN_CONFIGS) + list(GPT2_CONFIGS)}, "
        "a Hugging Face config.json (or its directory) or a tinygen run directory"
    )


def nf4_nbytes(numel: int, blocksize: int = 64, double_quant: bool = True) -> int:
    """Bytes of one NF4 tensor, the same count as `NF4Tensor.nbytes`."""
    blocks = -(-numel // blocksize)
    constants = blocks + 4 * -(-blocks // ABSMAX_BLOCKSIZE) + 4 if double_quant else 4 * blocks
    return -(-numel // 2) + constants


def weight_bytes(inv: Inventory, fmt: str, *, other_bytes: int = 2) -> int:
    """Bytes to store the weights. fp32/fp16 store everything in that type; int8, nf4 and
    nf4-dq quantise the linear layers and keep the rest in 16 bits (as QLoRA does). int8
    counts one byte per weight plus one fp32 scale per output row (LLM.int8 style)."""
    if fmt == "fp32":
        return 4 * inv.total_params
    if fmt == "fp16":
        return 2 * inv.total_params
    rest = other_bytes * inv.other_params
    if fmt == "int8":
        return rest + sum(layer.numel + 4 * layer.out_features for layer in inv.linear)
    if fmt in ("nf4", "nf4-dq"):
        return rest + sum(nf4_nbytes(layer.numel, 64, fmt == "nf4-dq") for layer in inv.linear)
    raise TinygenError(f"unknown weight format {fmt!r}; choose fp32, fp16, int8, nf4 or nf4-dq")


def training_bytes(
    inv: Inventory, method: str, targets: str | list[str], r: int, *, base_bytes: int = 2
) -> dict[str, int]:
    """Memory of fine-tuning with AdamW, excluding activations. full: fp32 weights,
    gradients and two AdamW states for every parameter (16 bytes each). lora: the frozen
    base in `base_bytes` per weight, the fp32 adapter with its gradient and AdamW states.
    qlora: the base linear layers in NF4 with double quantisation, the rest in 16 bits."""
    if method == "full":
        n = inv.total_params
        return {"weights": 4 * n, "gradients": 4 * n, "adamw": 8 * n, "adapter": 0}
    adapter = inv.lora_params(targets, r)
    if method == "lora":
        base = base_bytes * inv.total_params
    elif method in ("qlora", "qlora-dq"):
        base = weight_bytes(
            inv, "nf4-dq" if method == "qlora-dq" else "nf4", other_bytes=base_bytes
        )
    else:
        raise TinygenError(f"unknown method {method!r}; choose full, lora, qlora or qlora-dq")
    return {"weights": base, "gradients": 4 * adapter, "adamw": 8 * adapter, "adapter": 4 * adapter}


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Measured peak: CUDA's max allocated bytes, or on CPU the process's peak resident
    set size (which includes the Python interpreter and torch itself)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def memory_report(inv: Inventory, targets: str | list[str] | None = None, r: int = 8) -> str:
    """The text `tinygen memory` prints."""
    if targets is None:  # the family's usual targets, or every linear layer if it lacks them
        targets = (
            list(inv.default_targets) if inv.targeted(list(inv.default_targets)) else ("all-linear")
        )
    big = inv.total_params >= 1e8
    scale, unit = (GB, "GB") if big else (1e6, "MB")
    count = f"{inv.total_params / 1e9:.2f}B" if big else f"{inv.total_params / 1e6:.2f}M"
    lines = [
        f"{inv.name}: {inv.total_params:,} parameters ({count}); "
        f"{inv.linear_params:,} in {len(inv.linear)} linear layers"
    ]
    lines.append("LoRA trainable parameters (share of base + adapter, as PEFT prints it):")
    rows = [(targets, r), ("all-linear", 64)]
    if inv.targeted(list(inv.default_targets)):
        rows.insert(0, (list(inv.default_targets), 8))
    for t, rank in dict.fromkeys((tuple(t) if isinstance(t, list) else t, k) for t, k in rows):
        a = inv.lora_params(t, rank)
        shown = t if isinstance(t, str) else ",".join(t)
        share = 100 * a / (inv.total_params + a)
        lines.append(f"  r={rank:<3} on {shown:<24} {a:>15,}  {share:.3f}%")
    lines.append(f"weight memory ({unit} = 10^{9 if big else 6} bytes):")
    for fmt, label in (
        ("fp32", "fp32"),
        ("fp16", "fp16/bf16"),
        ("int8", "int8"),
        ("nf4", "NF4"),
        ("nf4-dq", "NF4 + double quant"),
    ):
        b = weight_bytes(inv, fmt)
        bits = 8 * b / inv.total_params
        lines.append(f"  {label:<20} {b / scale:9.3f} {unit}  {bits:6.3f} bits/param")
    shown = targets if isinstance(targets, str) else ",".join(targets)
    lines.append(f"training memory without activations, AdamW, LoRA r={r} on {shown} ({unit}):")
    lines.append(
        f"  {'method':<22}{'weights':>10}{'grads':>10}{'adamw':>10}{'adapter':>10}{'total':>10}"
    )
    for method, label in (
        ("full", "full fine-tune (fp32)"),
        ("lora", "LoRA (fp16 base)"),
        ("qlora", "QLoRA (NF4)"),
        ("qlora-dq", "QLoRA (NF4 + DQ)"),
    ):
        row = training_bytes(inv, method, targets, r)
        lines.append(
            f"  {label:<22}"
            + "".join(f"{row[k] / scale:10.3f}" for k in row)
            + f"{sum(row.values()) / scale:10.3f}"
        )
    return "\n".join(lines)
