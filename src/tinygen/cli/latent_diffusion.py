"""`tinygen train latent-diffusion`: flags, then a call into `tinygen.recipes.latent_diffusion`.

(`tinygen generate`, `eval text2image`, `inpaint` and `eval inpainting` work on its runs
through cli/text2image.py; `tinygen img2img --run` and `eval img2img` live in cli/img2img.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    checked,
    dataclass_from_args,
    finish_training,
    train_config_from_args,
)
from tinygen.cli.diffusion_flags import add_schedule_flags
from tinygen.models.conditioning import TextConditionerConfig
from tinygen.models.latent_diffusion import LATENT_ATTENTIONS
from tinygen.nn.unet import UNetConfig
from tinygen.recipes import latent_diffusion as ldm_recipes
from tinygen.recipes.latent_diffusion import LatentCaptionData
from tinygen.train.config import TrainConfig

UNET_EXCLUDE = (
    "image_size", "in_channels", "out_channels", "num_classes", "context_dim", "cond_emb_dim",
    "context_mode", "attention_type",
)  # fmt: skip
TEXT_EXCLUDE = ("vocab_size", "context_length", "drop_prob")


def register(commands) -> None:
    train = commands.train.add_parser(
        "latent-diffusion",
        help="train latent diffusion: text-to-image on a frozen autoencoder's latents",
        description="Train a text-conditional diffusion model on the latents of a trained "
        "autoencoder run (Rombach et al. 2022): Stable Diffusion's transformer blocks "
        "cross-attend to the caption, which is dropped 10%% of the time for classifier-free "
        "guidance. The run holds everything (autoencoder, tokenizer, text tower). The "
        "defaults shown are the shapes preset's (another --preset brings its own).",
    )
    presets = ldm_recipes.PRESETS
    train.add_argument(
        "--autoencoder",
        type=Path,
        required=True,
        help="the first stage: a run of `tinygen train autoencoder` (KL or VQ, f = 4 or 8)",
    )
    train.add_argument(
        "--text-encoder",
        default="joint",
        help="joint (a text Transformer trained with the U-Net, LDM's choice; default) | "
        "clip:CLIP_RUN (the frozen text tower of a CLIP run, Stable Diffusion's choice)",
    )
    train.add_argument(
        "--preset",
        choices=sorted(presets),
        default="shapes",
        help="named config (default shapes: the measured CPU recipe; tiny: a smoke test)",
    )
    train.add_argument(
        "--drop-prob",
        type=checked(float, min=0, below=1),
        default=0.1,
        help="chance of the empty caption in training, for classifier-free guidance (0.1)",
    )
    train.add_argument(
        "--attention",
        choices=LATENT_ATTENTIONS,
        default="concat_kv",
        help="how the U-Net reads the caption: concat_kv (GLIDE's block, the caption's keys "
        "and values concatenated to the image's; default: 87.9%% colour and shape against "
        "34.8%% at equal steps, docs/benchmarks.md) | transformer (Stable Diffusion's block, "
        "cross-attention)",
    )
    add_schedule_flags(train)
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/latent-diffusion)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    shapes, source = presets["shapes"], "the shapes preset's"
    add_dataclass_flags(
        train, LatentCaptionData, title="data", defaults=shapes.extras["data"], source=source
    )
    add_dataclass_flags(
        train, TextConditionerConfig, exclude=TEXT_EXCLUDE, title="text encoder (joint)",
        defaults=shapes.model.text, source=source,
    )  # fmt: skip
    add_dataclass_flags(
        train, UNetConfig, exclude=UNET_EXCLUDE, title="U-Net (on the latents)",
        defaults=shapes.model.unet, source=source,
    )  # fmt: skip
    add_dataclass_flags(train, TrainConfig, title="training", defaults=shapes.train, source=source)
    train.set_defaults(func=train_latent_diffusion)


def train_latent_diffusion(args: argparse.Namespace) -> int:
    preset = ldm_recipes.preset(args.preset)
    data = dataclass_from_args(LatentCaptionData, args, preset.extras["data"])
    text = dataclass_from_args(TextConditionerConfig, args, preset.model.text)
    unet = dataclass_from_args(UNetConfig, args, preset.model.unet)
    train_config = train_config_from_args(args, preset.train)
    config = dataclasses.replace(
        preset.model,
        unet=unet,
        text=text,
        beta_schedule=args.beta_schedule or preset.model.beta_schedule,
        prediction_type=args.prediction_type or preset.model.prediction_type,
    )
    out = args.out or Path("runs/latent-diffusion")
    result = ldm_recipes.train_latent_diffusion(
        args.autoencoder, config, train_config, data, out, text_encoder=args.text_encoder,
        drop_prob=args.drop_prob, attention=args.attention, resume=args.resume,
        progress=not args.no_progress,
    )  # fmt: skip
    return finish_training(
        result, out, f"try: tinygen generate --run {out} --prompt 'a large red circle on the left'"
    )
