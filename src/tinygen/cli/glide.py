"""`tinygen train glide`: flags, then a call into `tinygen.recipes.glide`.

(`tinygen generate`, `eval text2image` and `inpaint`, which work on every text-to-image
run, live in cli/text2image.py.)"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    finish_training,
    train_config_from_args,
)
from tinygen.cli.diffusion_flags import add_schedule_flags
from tinygen.models.conditioning import TextConditionerConfig
from tinygen.nn.resnet import CONTEXT_MODES
from tinygen.nn.unet import UNetConfig
from tinygen.recipes import glide as glide_recipes
from tinygen.recipes.glide import CaptionData
from tinygen.train.config import TrainConfig

UNET_EXCLUDE = (
    "image_size",
    "in_channels",
    "out_channels",
    "num_classes",
    "context_dim",
    "cond_emb_dim",
    "context_mode",
)
TEXT_EXCLUDE = ("vocab_size", "context_length")


def register(commands) -> None:
    train = commands.train.add_parser(
        "glide",
        help="train GLIDE: text-to-image diffusion with its own text encoder",
        description="Train a text-conditional diffusion model and its text encoder on the "
        "captioned shapes world (GLIDE, Nichol et al. 2021). The defaults shown are the "
        "shapes preset's (another --preset brings its own).",
    )
    presets = glide_recipes.PRESETS
    train.add_argument(
        "--preset",
        choices=sorted(presets),
        default="shapes",
        help="named config (default shapes: the measured CPU recipe; tiny: a smoke test)",
    )
    train.add_argument(
        "--conditioning",
        dest="context_mode",
        choices=CONTEXT_MODES,
        default=None,
        help="how caption tokens reach the U-Net: concat_kv (GLIDE: joined to every "
        "self-attention's keys and values; default) | cross_attention (latent diffusion's)",
    )
    train.add_argument(
        "--inpainting",
        action="store_true",
        help="train the inpainting variant: the U-Net also sees a masked image and the mask",
    )
    add_schedule_flags(train)
    train.add_argument("--out", type=Path, default=None, help="run directory (default runs/glide)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="GLIDE_RUN",
        help="start from this GLIDE run's weights (same network; e.g. to fine-tune it with "
        "--layout-weight); the optimizer and schedule start afresh",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    shapes, source = presets["shapes"], "the shapes preset's"
    add_dataclass_flags(
        train, CaptionData, title="data", defaults=shapes.extras["data"], source=source
    )
    add_dataclass_flags(
        train,
        TextConditionerConfig,
        exclude=TEXT_EXCLUDE,
        title="text encoder",
        defaults=shapes.model.text,
        source=source,
    )
    add_dataclass_flags(
        train,
        UNetConfig,
        exclude=UNET_EXCLUDE,
        title="U-Net",
        defaults=shapes.model.unet,
        source=source,
    )
    add_dataclass_flags(train, TrainConfig, title="training", defaults=shapes.train, source=source)
    train.set_defaults(func=train_glide)


def train_glide(args: argparse.Namespace) -> int:
    preset = glide_recipes.preset(args.preset)
    data = dataclass_from_args(CaptionData, args, preset.extras["data"])
    text = dataclass_from_args(TextConditionerConfig, args, preset.model.text)
    unet = dataclass_from_args(UNetConfig, args, preset.model.unet)
    unet = dataclasses.replace(
        unet,
        image_size=data.image_size,
        context_mode=args.context_mode or preset.model.unet.context_mode,
    )
    unet.validate()
    train_config = train_config_from_args(args, preset.train)
    config = dataclasses.replace(
        preset.model,
        unet=unet,
        text=text,
        inpainting=args.inpainting,
        beta_schedule=args.beta_schedule or preset.model.beta_schedule,
        prediction_type=args.prediction_type or preset.model.prediction_type,
    )
    out = args.out or Path("runs/glide-inpaint" if args.inpainting else "runs/glide")
    result = glide_recipes.train_glide(
        config,
        train_config,
        data,
        out,
        resume=args.resume,
        progress=not args.no_progress,
        init_from=args.init_from,
    )
    verb = "tinygen inpaint" if args.inpainting else "tinygen generate"
    return finish_training(result, out, f"try: {verb} --run {out} --prompt 'a red circle'")
