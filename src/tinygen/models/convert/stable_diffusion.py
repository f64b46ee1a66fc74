"""Stable Diffusion v1.x in diffusers' layout (`UNet2DConditionModel`, `AutoencoderKL`) -> our
U-Net (`tinygen.nn.unet`, `attention_type="transformer"`) and KL autoencoder
(`tinygen.models.autoencoder`). The text encoder is OpenAI CLIP's text tower
(`tinygen.models.convert.clip`).

Two halves, each readable on its own:

- **Configs**: a diffusers config.json -> our `UNetConfig` / `AutoencoderConfig`. Every
  setting we do not implement (class embeddings, SDXL's added conditions, other block types)
  is refused by name rather than ignored. Trap: in SD v1 configs `attention_head_dim` (8)
  is the number of heads, not their width (diffusers reads `num_attention_heads or
  attention_head_dim` as the head count for this reason).
- **Weights**: one table per model, written as renames from our names to diffusers' (applied
  in order to each of our tensor names), plus the fusions of q, k, v (our attention has one
  `qkv_proj`, cross-attention one `kv_proj`). The table is checked by
  `tinygen.models.convert.common.convert_state_dict`: every reference tensor used, every one
  of ours filled, every shape equal, or one error naming each problem. Trap: the Hub's SD v1
  VAEs still carry the attention names of diffusers < 0.14 (`query`, `key`, `value`,
  `proj_attn`), which current diffusers renames on load; `modern_vae_names` does the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.models.autoencoder import AutoencoderConfig
from tinygen.models.convert.common import Conversion, Rule, convert_state_dict
from tinygen.nn.unet import UNetConfig

# -- weights: our name -> diffusers' name, one rename after another ------------------------
UNET_RENAMES = [
    (r"^encoder\.conv_in\.", "conv_in."),
    (r"^encoder\.time_mlp\.0\.", "time_embedding.linear_1."),
    (r"^encoder\.time_mlp\.2\.", "time_embedding.linear_2."),
    (r"^encoder\.down\.(\d+)\.blocks\.(\d+)\.", r"down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.attns\.(\d+)\.", r"down_blocks.\1.attentions.\2."),
    (r"^encoder\.downsamplers\.(\d+)\.", r"down_blocks.\1.downsamplers.0."),
    (r"^encoder\.mid_block1\.", "mid_block.resnets.0."),
    (r"^encoder\.mid_attn\.", "mid_block.attentions.0."),
    (r"^encoder\.mid_block2\.", "mid_block.resnets.1."),
    (r"^up\.(\d+)\.blocks\.(\d+)\.", r"up_blocks.\1.resnets.\2."),
    (r"^up\.(\d+)\.attns\.(\d+)\.", r"up_blocks.\1.attentions.\2."),
    (r"^upsamplers\.(\d+)\.", r"up_blocks.\1.upsamplers.0."),
    (r"^norm_out\.", "conv_norm_out."),
    # inside a ResBlock (diffusers' ResnetBlock2D)
    (r"\.emb_proj\.", ".time_emb_proj."),
    (r"\.skip\.", ".conv_shortcut."),
    # inside a TransformerBlock (BasicTransformerBlock): attention and GEGLU feed-forward
    (r"\.q_proj\.", ".to_q."),
    (r"\.out_proj\.", ".to_out.0."),
    (r"\.ff\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.out\.", ".ff.net.2."),
]
VAE_RENAMES = [
    (r"^encoder\.down\.(\d+)\.blocks\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.resample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.blocks\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"^decoder\.up\.(\d+)\.resample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"\.mid\.block1\.", ".mid_block.resnets.0."),
    (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn\.attn\.", ".mid_block.attentions.0."),
    (r"\.mid\.block2\.", ".mid_block.resnets.1."),
    (r"\.norm_out\.", ".conv_norm_out."),
    (r"\.skip\.", ".conv_shortcut."),
    (r"\.out_proj\.", ".to_out.0."),
]
# our fused projections -> diffusers' separate ones, concatenated along dim 0 in this order
FUSED = {".qkv_proj.": (".to_q.", ".to_k.", ".to_v."), ".kv_proj.": (".to_k.", ".to_v.")}
# diffusers < 0.14 attention names, still in the Hub's SD v1 VAE files
OLD_VAE_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v."}
OLD_VAE_ATTENTION[".proj_attn."] = ".to_out.0."


def reference_names(ours: str, renames: list[tuple[str, str]]) -> tuple[str, ...]:
    """The diffusers tensors our tensor `ours` is made of (three for a fused q, k, v)."""
    for pattern, replacement in renames:
        ours = re.sub(pattern, replacement, ours)
    for fused, parts in FUSED.items():
        if fused in ours:
            return tuple(ours.replace(fused, part) for part in parts)
    return (ours,)


def table_for(ours: Mapping[str, Tensor], renames: list[tuple[str, str]]) -> list[Rule]:
    """One `Rule` per tensor of our model, naming the diffusers tensors it comes from."""
    return [Rule(key, reference_names(key, renames)) for key in ours]


def modern_vae_names(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A VAE state dict with diffusers < 0.14's attention names renamed to today's (both
    kinds of file load)."""
    out = {}
    for key, tensor in state_dict.items():
        if ".mid_block.attentions." in key:
            for old, new in OLD_VAE_ATTENTION.items():
                key = key.replace(old, new)
        out[key] = tensor
    return out


def convert_unet_state_dict(
    diffusers_state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor]
) -> Conversion:
    """A `UNet2DConditionModel` state dict -> our U-Net's (checked against `ours`, our
    model's state dict; meta tensors are fine)."""
    return convert_state_dict(
        diffusers_state_dict, ours, table_for(ours, UNET_RENAMES), source="the U-Net weights"
    )


def convert_vae_state_dict(
    diffusers_state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor]
) -> Conversion:
    """An `AutoencoderKL` state dict (old or new attention names) -> our autoencoder's."""
    return convert_state_dict(
        modern_vae_names(diffusers_state_dict),
        ours,
        table_for(ours, VAE_RENAMES),
        source="the VAE weights",
    )


# -- configs ---------------------------------------------------------------------------------
# diffusers' defaults for what a config.json may omit, and the values we implement
UNET_DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2, norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
    transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None,
    use_linear_projection=False, time_embedding_dim=None,
)  # fmt: skip
UNET_FIXED = dict(
    center_input_sample=False, only_cross_attention=False, downsample_padding=1,
    mid_block_scale_factor=1, dropout=0.0, act_fn="silu", reverse_transformer_layers_per_block=None,
    encoder_hid_dim=None, encoder_hid_dim_type=None, dual_cross_attention=False,
    class_embed_type=None, addition_embed_type=None, num_class_embeds=None,
    resnet_time_scale_shift="default", resnet_skip_time_act=False, resnet_out_scale_factor=1.0,
    time_embedding_type="positional", time_embedding_act_fn=None, timestep_post_act=None,
    time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3,
    projection_class_embeddings_input_dim=None, attention_type="default",
    class_embeddings_concat=False, mid_block_only_cross_attention=None, cross_attention_norm=None,
)  # fmt: skip
VAE_DEFAULTS = dict(
    in_channels=3, out_channels=3, block_out_channels=(64,), layers_per_block=1,
    latent_channels=4, norm_num_groups=32, scaling_factor=0.18215, use_quant_conv=True,
    use_post_quant_conv=True, mid_block_add_attention=True,
)  # fmt: skip
VAE_FIXED = dict(act_fn="silu", shift_factor=None, latents_mean=None, latents_std=None)


def _settings(config: Mapping, defaults: dict, fixed: dict, what: str) -> dict:
    """The config's values over diffusers' defaults; refuses values we do not implement."""
    values = {**defaults, **fixed, **{k: v for k, v in config.items() if not k.startswith("_")}}
    unsupported = [
        f"{key}={values[key]!r} (we implement {value!r})"
        for key, value in fixed.items()
        if _plain(values[key]) != _plain(value)
    ]
    if unsupported:
        raise TinygenError(
            f"this {what} uses settings our model does not implement: {', '.join(unsupported)}; "
            "tinygen runs Stable Diffusion v1.x / v2.x checkpoints"
        )
    return values


def _plain(value):
    """Lists of one repeated value read as that value (diffusers writes both forms)."""
    if isinstance(value, (list, tuple)) and value and all(v == value[0] for v in value):
        return value[0]
    return value


def _levels(widths: list[int], what: str) -> tuple[int, tuple[int, ...]]:
    """block_out_channels -> (base_channels, channel_mult), which must be whole multiples."""
    base = widths[0]
    if any(w % base for w in widths):
        raise TinygenError(
            f"the {what}'s block_out_channels {widths} are not multiples of the first; our "
            "models describe widths as base_channels x channel_mult"
        )
    return base, tuple(w // base for w in widths)


def _one_value(value, key: str, what: str):
    value = _plain(value)
    if isinstance(value, (list, tuple)):
        raise TinygenError(f"the {what} sets {key}={value!r} per level; we take one value")
    return value


def unet_config_from_diffusers(config: Mapping) -> UNetConfig:
    """Our `UNetConfig` for a diffusers `UNet2DConditionModel` config.json."""
    what = "U-Net config"
    c = _settings(config, UNET_DEFAULTS, UNET_FIXED, what)
    down, up = list(c.get("down_block_types", ())), list(c.get("up_block_types", ()))
    kinds = {"CrossAttnDownBlock2D", "DownBlock2D"}
    mirrored = [d.replace("Down", "Up") for d in reversed(down)]
    if (
        not down
        or set(down) - kinds
        or up != mirrored
        or c["mid_block_type"] != UNET_DEFAULTS["mid_block_type"]
    ):
        raise TinygenError(
            f"the {what} has blocks {down} / {c['mid_block_type']} / {up}; we implement "
            "CrossAttnDownBlock2D / DownBlock2D levels mirrored by the up path around "
            "UNetMidBlock2DCrossAttn (Stable Diffusion v1 and v2)"
        )
    widths = list(c["block_out_channels"])
    base, mult = _levels(widths, what)
    size = c["sample_size"] or 64
    heads = c["num_attention_heads"] or c["attention_head_dim"]  # the SD v1 naming trap
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,)
    return UNetConfig(
        image_size=int(size),
        in_channels=c["in_channels"],
        out_channels=c["out_channels"],
        base_channels=base,
        channel_mult=mult,
        num_res_blocks=_one_value(c["layers_per_block"], "layers_per_block", what),
        attention_resolutions=tuple(
            size // 2**i for i, kind in enumerate(down) if kind.startswith("CrossAttn")
        ),
        num_heads=heads,
        context_dim=_one_value(c["cross_attention_dim"], "cross_attention_dim", what),
        scale_shift=False,
        norm_groups=c["norm_num_groups"],
        norm_eps=c["norm_eps"],
        attention_type="transformer",
        transformer_depth=_one_value(
            c["transformer_layers_per_block"], "transformer_layers_per_block", what
        ),
        linear_projection=bool(c["use_linear_projection"]),
        time_embed_dim=c["time_embedding_dim"] or 0,
        flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
        freq_shift=float(c["freq_shift"]),
    )


def vae_config_from_diffusers(config: Mapping) -> AutoencoderConfig:
    """Our `AutoencoderConfig` for a diffusers `AutoencoderKL` config.json."""
    what = "VAE config"
    c = _settings(config, VAE_DEFAULTS, VAE_FIXED, what)
    n = len(c["block_out_channels"])
    down = list(c.get("down_block_types", ["DownEncoderBlock2D"] * n))
    up = list(c.get("up_block_types", ["UpDecoderBlock2D"] * n))
    if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(up) != n:
        raise TinygenError(
            f"the {what} has blocks {down} / {up}; we implement DownEncoderBlock2D / "
            "UpDecoderBlock2D (Stable Diffusion's AutoencoderKL)"
        )
    if c["in_channels"] != c["out_channels"]:
        raise TinygenError(f"the {what} maps {c['in_channels']} to {c['out_channels']} channels")
    if c["use_quant_conv"] != c["use_post_quant_conv"]:
        raise TinygenError(f"the {what} has only one of quant_conv / post_quant_conv")
    base, mult = _levels(list(c["block_out_channels"]), what)
    return AutoencoderConfig(
        in_channels=c["in_channels"],
        base_channels=base,
        channel_mult=mult,
        num_res_blocks=c["layers_per_block"],
        latent_channels=c["latent_channels"],
        norm_groups=c["norm_num_groups"],
        norm_eps=1e-6,  # fixed in diffusers' Encoder / Decoder
        mid_attention=bool(c["mid_block_add_attention"]),
        asymmetric_padding=True,  # diffusers' encoder down-samplers: padding=0 -> pad (0,1,0,1)
        quant_conv=bool(c["use_quant_conv"]),
        scaling_factor=float(c["scaling_factor"]),
    )


# diffusers' DDIMScheduler defaults for what a scheduler_config.json may omit (SD v1's file is
# a PNDMScheduler's; its DDIM values are read the way DDIMScheduler.from_config reads them)
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
    thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
    sample_max_value=1.0, timestep_spacing="leading",
)  # fmt: skip
SCHEDULER_FIXED = dict(trained_betas=None, rescale_betas_zero_snr=False)


def scheduler_from_diffusers(config: Mapping) -> tuple[NoiseSchedule, dict]:
    """The noise schedule and `tinygen.diffusion.sampling.sample` options (DDIM, eta 0) of a
    diffusers scheduler_config.json: Stable Diffusion v1's is scaled_linear 0.00085-0.012
    over 1000 steps, `steps_offset` 1, `set_alpha_to_one` false (the chain ends at
    alpha_bar_0, not 1), `leading` spacing, no clipping."""
    c = _settings(config, SCHEDULER_DEFAULTS, SCHEDULER_FIXED, "scheduler config")
    steps, kind = int(c["num_train_timesteps"]), c["beta_schedule"]
    if kind == "squaredcos_cap_v2":  # no beta range
        schedule = NoiseSchedule(kind, steps)
    else:
        schedule = NoiseSchedule(kind, steps, c["beta_start"], c["beta_end"])
    final = 1.0 if c["set_alpha_to_one"] else float(schedule.alphas_cumprod[0])
    options = dict(
        sampler="ddim",
        eta=0.0,
        prediction_type=c["prediction_type"],
        spacing=c["timestep_spacing"],
        steps_offset=int(c["steps_offset"]),
        final_alpha_cumprod=final,
        clip_sample=bool(c["clip_sample"]),
        clip_sample_range=float(c["clip_sample_range"]),
        thresholding=bool(c["thresholding"]),
        dynamic_thresholding_ratio=float(c["dynamic_thresholding_ratio"]),
        sample_max_value=float(c["sample_max_value"]),
    )
    return schedule, options
