"""GPT-2 in transformers' layout (`GPT2LMHeadModel`) -> our `GPT`.

Our GPT is GPT-2's architecture (pre-LN blocks, learned positions, a head tied to the
token embedding, biases everywhere), so the conversion is a renaming plus one transpose:
GPT-2's linear layers are `Conv1D`s that store their weight as (in, out), ours are
`nn.Linear`s, (out, in). The fused `c_attn` (q, k, v in that order) is our `qkv_proj`
as it is. From the config come two options our defaults do not have: the tanh
approximation of GELU (`gelu_new`) and GPT-2's LayerNorm epsilon.

Files differ in what they hold beyond the weights: the Hub's own `gpt2` files were saved
from the bare `GPT2Model` (no `transformer.` prefix), older ones carry the causal-mask
buffers `attn.bias` / `attn.masked_bias`, and the tied `lm_head.weight` may be stored or
not. All of these are read; nothing else is tolerated.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.models.convert.common import (
    Conversion,
    convert_state_dict,
    count_layers,
    expand_layers,
    rule,
    to_reference,
)

# transformers' GPT2Config defaults (what a config.json may omit), and the four published
# sizes (Radford et al. 2019, table 2; their config.json files on the Hub).
GPT2_DEFAULTS = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False,
    tie_word_embeddings=True,
)
GPT2_CONFIGS: dict[str, dict] = {
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(model_type="gpt2", n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25),
}
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}

# our GPT <- GPT2LMHeadModel
GPT2_TABLE = [
    rule("wte.weight", "transformer.wte.weight"),
    rule("wpe.weight", "transformer.wpe.weight"),
    rule("blocks.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight"),
    rule("blocks.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias"),
    rule("blocks.{i}.attn.qkv_proj.weight", "transformer.h.{i}.attn.c_attn.weight", transpose=True),
    rule("blocks.{i}.attn.qkv_proj.bias", "transformer.h.{i}.attn.c_attn.bias"),
    rule("blocks.{i}.attn.out_proj.weight", "transformer.h.{i}.attn.c_proj.weight", transpose=True),
    rule("blocks.{i}.attn.out_proj.bias", "transformer.h.{i}.attn.c_proj.bias"),
    rule("blocks.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight"),
    rule("blocks.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias"),
    rule("blocks.{i}.mlp.fc.weight", "transformer.h.{i}.mlp.c_fc.weight", transpose=True),
    rule("blocks.{i}.mlp.fc.bias", "transformer.h.{i}.mlp.c_fc.bias"),
    rule("blocks.{i}.mlp.proj.weight", "transformer.h.{i}.mlp.c_proj.weight", transpose=True),
    rule("blocks.{i}.mlp.proj.bias", "transformer.h.{i}.mlp.c_proj.bias"),
    rule("ln_f.weight", "transformer.ln_f.weight"),
    rule("ln_f.bias", "transformer.ln_f.bias"),
]
TIED = {"lm_head.weight": "wte.weight"}  # our head is the token embedding


def _refused(setting: str, why: str) -> TinygenError:
    return TinygenError(f"this GPT-2 checkpoint sets {setting}, which our GPT {why}")


def gpt_config_from_hf(hf_config: Mapping) -> dict:
    """Keyword arguments of our `GPTConfig` for a transformers GPT-2 config.json; settings
    our GPT does not implement are refused by name."""
    c = {**GPT2_DEFAULTS, **{k: v for k, v in hf_config.items() if v is not None}}
    if c["activation_function"] not in ACTIVATIONS:
        raise _refused(f"activation_function={c['activation_function']!r}", "lacks")
    if not c["scale_attn_weights"] or c["scale_attn_by_inverse_layer_idx"]:
        raise _refused("a non-standard attention scaling", "does not implement")
    if c["add_cross_attention"]:
        raise _refused("add_cross_attention", "has no cross-attention for")
    if not c["tie_word_embeddings"]:
        raise _refused("tie_word_embeddings=false", "always ties its head, so it cannot load")
    return dict(
        vocab_size=c["vocab_size"],
        block_size=c["n_positions"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        n_embd=c["n_embd"],
        dropout=0.0,
        bias=True,
        activation=ACTIVATIONS[c["activation_function"]],
        norm_eps=c["layer_norm_epsilon"],
        mlp_dim=c["n_inner"] or 0,
    )


def is_ignorable(key: str) -> bool:
    """The causal-mask buffers and the stored copy of the tied head."""
    return key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight"


def with_prefix(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys as GPT2LMHeadModel names them: a bare GPT2Model's file gains `transformer.`."""
    if any(k.startswith("transformer.") for k in hf_state_dict):
        return dict(hf_state_dict)
    return {k if k == "lm_head.weight" else f"transformer.{k}": v for k, v in hf_state_dict.items()}


def gpt2_table(ours: Mapping[str, Tensor]) -> list:
    return expand_layers(GPT2_TABLE, count_layers(ours, "blocks."))


def convert_gpt2_state_dict(
    hf_state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor]
) -> Conversion:
    """A GPT2LMHeadModel's (or GPT2Model's) state dict -> our GPT's, checked against `ours`."""
    return convert_state_dict(
        with_prefix(hf_state_dict),
        ours,
        gpt2_table(ours),
        ignore=is_ignorable,
        tied=TIED,
        source="the GPT-2 checkpoint",
    )


def to_gpt2_state_dict(ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our GPT's state dict in GPT2LMHeadModel's names and Conv1D layouts (the tied head
    left out, as transformers saves it), for writing a fine-tuned GPT-2 back."""
    return to_reference(ours, gpt2_table(ours))
