"""`tinygen train unclip-prior` and `tinygen train unclip-decoder`: flags, then a call into
`tinygen.recipes.unclip`. (variations, interpolate and `eval unclip` are in cli/unclip_use.py;
`tinygen generate` and `eval text2image` take a decoder run as any text-to-image run.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    finish_training,
    train_config_from_args,
)
from tinygen.models.clip_image_conditioner import ClipImageConditionerConfig
from tinygen.models.prior import PriorConfig
from tinygen.train.config import TrainConfig

PRIOR_EXCLUDE = ("embed_dim", "vocab_size", "context_length")
DECODER_EXCLUDE = ("embed_dim", "text")


def _common(parser: argparse.ArgumentParser, presets: dict, default_out: str) -> None:
    parser.add_argument(
        "--clip", type=Path, required=True, help="the frozen CLIP run (e.g. runs/clip)"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(presets),
        default="shapes",
        help="named config (default shapes: the measured CPU recipe; tiny: a smoke test)",
    )
    parser.add_argument("--out", type=Path, default=Path(default_out), help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(commands) -> None:
    from tinygen.recipes import unclip as recipes
    from tinygen.recipes.unclip_data import UnclipData

    source = "the shapes preset's"
    prior = commands.train.add_parser(
        "unclip-prior",
        help="train unCLIP's diffusion prior: caption -> CLIP image embedding",
        description="Train the diffusion prior of DALL-E 2 (Ramesh et al. 2022) on a frozen "
        "CLIP run: a causal Transformer that predicts a caption's CLIP image embedding. "
        "The CLIP embeddings of the training set are cached in --out.",
    )
    _common(prior, recipes.PRIOR_PRESETS, "runs/unclip-prior")
    shapes = recipes.PRIOR_PRESETS["shapes"]
    add_dataclass_flags(
        prior, UnclipData, title="data", defaults=shapes.extras["data"], source=source
    )
    add_dataclass_flags(
        prior, PriorConfig, exclude=PRIOR_EXCLUDE, title="prior", defaults=shapes.model,
        source=source,
    )  # fmt: skip
    add_dataclass_flags(prior, TrainConfig, title="training", defaults=shapes.train, source=source)
    prior.set_defaults(func=train_prior)

    decoder = commands.train.add_parser(
        "unclip-decoder",
        help="train unCLIP's decoder: CLIP image embedding -> image",
        description="Train the decoder of DALL-E 2: the diffusion model conditioned on a "
        "frozen CLIP's image embeddings (projected into the time embedding and into 4 "
        "context tokens; zeroed a tenth of the time for guidance). components.json in --out "
        "names the CLIP run and --prior, for `tinygen generate`.",
    )
    _common(decoder, recipes.DECODER_PRESETS, "runs/unclip-decoder")
    decoder.add_argument(
        "--prior",
        type=Path,
        default=None,
        help="the prior run that goes with this decoder (recorded; it may be trained later)",
    )
    shapes = recipes.DECODER_PRESETS["shapes"]
    add_dataclass_flags(
        decoder, UnclipData, title="data", defaults=shapes.extras["data"], source=source
    )
    add_dataclass_flags(
        decoder, ClipImageConditionerConfig, exclude=DECODER_EXCLUDE, title="CLIP conditioning",
        defaults=shapes.model.clip_image, source=source,
    )  # fmt: skip
    add_dataclass_flags(
        decoder, TrainConfig, title="training", defaults=shapes.train, source=source
    )
    decoder.set_defaults(func=train_decoder)


def train_prior(args: argparse.Namespace) -> int:
    from tinygen.recipes import unclip as recipes
    from tinygen.recipes.unclip_data import UnclipData

    preset = recipes.preset(recipes.PRIOR_TYPE, args.preset)
    data = dataclass_from_args(UnclipData, args, preset.extras["data"])
    config = dataclass_from_args(PriorConfig, args, preset.model)
    train_config = train_config_from_args(args, preset.train)
    result = recipes.train_prior(
        args.clip, config, train_config, data, args.out, resume=args.resume,
        progress=not args.no_progress,
    )  # fmt: skip
    hint = f"next: tinygen train unclip-decoder --clip {args.clip} --prior {args.out}"
    return finish_training(result, args.out, hint)


def train_decoder(args: argparse.Namespace) -> int:
    import dataclasses

    from tinygen.recipes import unclip as recipes
    from tinygen.recipes.unclip_data import UnclipData

    preset = recipes.preset(recipes.DECODER_TYPE, args.preset)
    data = dataclass_from_args(UnclipData, args, preset.extras["data"])
    clip_image = dataclass_from_args(ClipImageConditionerConfig, args, preset.model.clip_image)
    if clip_image.captions:  # the caption encoder shares the CLIP tokens' width
        clip_image = dataclasses.replace(
            clip_image, text=dataclasses.replace(clip_image.text, width=clip_image.width)
        )
    config = dataclasses.replace(preset.model, clip_image=clip_image)
    train_config = train_config_from_args(args, preset.train)
    result = recipes.train_decoder(
        args.clip, config, train_config, data, args.out, prior=args.prior,
        resume=args.resume, progress=not args.no_progress,
    )  # fmt: skip
    return finish_training(
        result, args.out, f"try: tinygen generate --run {args.out} --prompt 'a red circle'"
    )
