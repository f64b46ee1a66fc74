"""OpenAI CLIP in transformers' layout (`CLIPModel`, `CLIPTextModel`) -> our CLIP towers.

Our towers already have what OpenAI's CLIP has -- a class token, `ln_pre`, pre-LN blocks
with biased attention projections, a causal text mask, projections without bias and a
learned `logit_scale` -- so the conversion is a renaming plus one fusion: transformers
keeps q, k and v as three Linears, our attention one `qkv_proj` (q, k, v stacked in that
order). The options that differ from our own CLIP runs come from the config:

- activation: `quick_gelu` for OpenAI's checkpoints (`hidden_act`);
- no bias on the patch embedding (a bias-free Conv2d in OpenAI's ViT);
- pooling: the text state at the end-of-text token. transformers picks it as the highest
  id in the sequence when the config's `eos_token_id` is 2 (the value every early CLIP
  config carried; OpenAI's `text.argmax(dim=-1)`), else as the first `eos_token_id`.

The text-tower half is public on its own (`clip_text_config_from_hf`,
`convert_clip_text_state_dict`): Stable Diffusion's text encoder is this text tower.
Nothing here imports the model classes, so `models/clip.py` can call it.
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
    prefixed,
    rule,
)

# transformers' CLIPTextConfig / CLIPVisionConfig defaults: what a config.json may omit.
TEXT_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)
VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh"}


def _block_rules(ours: str, theirs: str) -> list:
    """One encoder layer: transformers' CLIPEncoderLayer -> our pre-LN `Block`."""
    attn = f"{theirs}.self_attn"
    return [
        rule(f"{ours}.ln_1.weight", f"{theirs}.layer_norm1.weight"),
        rule(f"{ours}.ln_1.bias", f"{theirs}.layer_norm1.bias"),
        rule(f"{ours}.attn.qkv_proj.weight", *(f"{attn}.{p}_proj.weight" for p in "qkv")),
        rule(f"{ours}.attn.qkv_proj.bias", *(f"{attn}.{p}_proj.bias" for p in "qkv")),
        rule(f"{ours}.attn.out_proj.weight", f"{attn}.out_proj.weight"),
        rule(f"{ours}.attn.out_proj.bias", f"{attn}.out_proj.bias"),
        rule(f"{ours}.ln_2.weight", f"{theirs}.layer_norm2.weight"),
        rule(f"{ours}.ln_2.bias", f"{theirs}.layer_norm2.bias"),
        rule(f"{ours}.mlp.fc.weight", f"{theirs}.mlp.fc1.weight"),
        rule(f"{ours}.mlp.fc.bias", f"{theirs}.mlp.fc1.bias"),
        rule(f"{ours}.mlp.proj.weight", f"{theirs}.mlp.fc2.weight"),
        rule(f"{ours}.mlp.proj.bias", f"{theirs}.mlp.fc2.bias"),
    ]


# our TextTransformer <- transformers' CLIPTextTransformer (the `text_model.` of CLIPModel)
TEXT_TABLE = [
    rule("token_embedding.weight", "embeddings.token_embedding.weight"),
    rule("pos_embedding", "embeddings.position_embedding.weight"),
    *_block_rules("blocks.{i}", "encoder.layers.{i}"),
    rule("ln_final.weight", "final_layer_norm.weight"),
    rule("ln_final.bias", "final_layer_norm.bias"),
]
# our VisionTransformer <- transformers' CLIPVisionTransformer (`vision_model.`)
VISION_TABLE = [
    rule("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
    rule("class_token", "embeddings.class_embedding"),
    rule("pos_embedding", "embeddings.position_embedding.weight"),
    rule("ln_pre.weight", "pre_layrnorm.weight"),  # (sic: transformers' name)
    rule("ln_pre.bias", "pre_layrnorm.bias"),
    *_block_rules("blocks.{i}", "encoder.layers.{i}"),
    rule("ln_post.weight", "post_layernorm.weight"),
    rule("ln_post.bias", "post_layernorm.bias"),
]
# our CLIP <- CLIPModel: the two towers, the projections and the temperature
HEAD_TABLE = [
    rule("visual_projection.weight"),
    rule("text_projection.weight"),
    rule("logit_scale"),
]


def is_position_ids(key: str) -> bool:
    """The `position_ids` buffers older transformers saved: arange(n), nothing learned."""
    return key.endswith("embeddings.position_ids")


def _tower_config(hf: Mapping, key: str, defaults: dict) -> dict:
    """A tower's settings from a CLIPModel config (`text_config`, or the older
    `text_config_dict`, which wins as in transformers) or a bare tower config."""
    if key in hf or f"{key}_dict" in hf:
        tower = {**(hf.get(key) or {}), **(hf.get(f"{key}_dict") or {})}
    else:
        tower = dict(hf)
    return {**defaults, **{k: v for k, v in tower.items() if v is not None}}


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise TinygenError(
            f"CLIP checkpoint uses activation {name!r}, which our blocks do not have "
            f"(they have {', '.join(sorted(ACTIVATIONS))})"
        )
    return ACTIVATIONS[name]


def clip_text_config_from_hf(hf_config: Mapping) -> dict:
    """Keyword arguments of our `TextTransformer` for a transformers CLIP text config: a
    CLIPModel config.json (its `text_config`) or a CLIPTextModel one (Stable Diffusion's
    text_encoder/config.json)."""
    t = _tower_config(hf_config, "text_config", TEXT_DEFAULTS)
    legacy = t["eos_token_id"] == 2  # transformers' rule (its PR #24773)
    return dict(
        vocab_size=t["vocab_size"],
        context_length=t["max_position_embeddings"],
        width=t["hidden_size"],
        layers=t["num_hidden_layers"],
        heads=t["num_attention_heads"],
        mlp_dim=t["intermediate_size"],
        activation=_activation(t["hidden_act"]),
        norm_eps=t["layer_norm_eps"],
        pooling="argmax" if legacy else "eos",
        eos_token_id=0 if legacy else t["eos_token_id"],
    )


def clip_config_from_hf(hf_config: Mapping) -> dict:
    """Keyword arguments of our `CLIPConfig` for a transformers CLIPModel config.json."""
    text = clip_text_config_from_hf(hf_config)
    v = _tower_config(hf_config, "vision_config", VISION_DEFAULTS)
    if (
        _activation(v["hidden_act"]) != text["activation"]
        or v["layer_norm_eps"] != text["norm_eps"]
    ):
        raise TinygenError(
            "this CLIP checkpoint's towers differ in activation or LayerNorm epsilon "
            f"({v['hidden_act']}/{v['layer_norm_eps']} vs {text['activation']}/"
            f"{text['norm_eps']}); our CLIPConfig has one of each"
        )
    return dict(
        embed_dim=hf_config.get("projection_dim", 512),
        image_size=v["image_size"],
        in_channels=v["num_channels"],
        image_tower="vit",
        patch_size=v["patch_size"],
        vision_width=v["hidden_size"],
        vision_layers=v["num_hidden_layers"],
        vision_heads=v["num_attention_heads"],
        vision_mlp_dim=v["intermediate_size"],
        patch_bias=False,
        text_tower="transformer",
        vocab_size=text["vocab_size"],
        context_length=text["context_length"],
        text_width=text["width"],
        text_layers=text["layers"],
        text_heads=text["heads"],
        text_mlp_dim=text["mlp_dim"],
        activation=text["activation"],
        norm_eps=text["norm_eps"],
        text_pooling=text["pooling"],
        eos_token_id=text["eos_token_id"],
        logit_scale_init=hf_config.get("logit_scale_init_value", 2.6592),
    )


def convert_clip_text_state_dict(
    hf_state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """A transformers CLIP text tower's tensors -> our `TextTransformer`'s state dict.

    hf_state_dict: a CLIPTextModel's, with or without the `text_model.` prefix (it depends
    on the transformers version that wrote the file); ours: our tower's `state_dict()`,
    which gives the names and shapes to check against."""
    prefix = "text_model."
    if not any(k.startswith(prefix) for k in hf_state_dict):
        prefix = ""
    table = expand_layers(prefixed(TEXT_TABLE, theirs=prefix), count_layers(ours, "blocks."))
    return convert_state_dict(
        hf_state_dict, ours, table, ignore=is_position_ids, source="the CLIP text encoder"
    ).state_dict


def clip_table(ours: Mapping[str, Tensor]) -> list:
    """The whole CLIPModel table, layers counted from our state dict."""
    return [
        *expand_layers(
            prefixed(VISION_TABLE, "visual.", "vision_model."),
            count_layers(ours, "visual.blocks."),
        ),
        *expand_layers(
            prefixed(TEXT_TABLE, "text.", "text_model."), count_layers(ours, "text.blocks.")
        ),
        *HEAD_TABLE,
    ]


def convert_clip_state_dict(
    hf_state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor]
) -> Conversion:
    """A transformers CLIPModel's state dict -> our `CLIP`'s (checked against `ours`)."""
    return convert_state_dict(
        hf_state_dict, ours, clip_table(ours), ignore=is_position_ids, source="the CLIP checkpoint"
    )
