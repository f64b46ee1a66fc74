"""`tinygen train diffusion` and `train noisy-classifier`: flags, then a call into
`tinygen.recipes.diffusion`. (`sample diffusion` and `eval diffusion`: cli/diffusion_sample.py.)"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    field_type,
    finish_training,
    positive_int,
    train_config_from_args,
)
from tinygen.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES
from tinygen.models.diffusion import CONDITIONINGS, DiffusionConfig
from tinygen.nn.unet import UNetConfig
from tinygen.recipes import diffusion as diffusion_recipes
from tinygen.recipes.diffusion_sampling import parse_labels  # noqa: F401 - its old home
from tinygen.train.config import TrainConfig

PRESETS = diffusion_recipes.PRESETS  # library data: tinygen.recipes.diffusion
UNET_EXCLUDE = ("in_channels", "out_channels", "num_classes", "context_dim", "cond_emb_dim")


def register(commands) -> None:
    for name, helptext in (
        ("diffusion", "train a DDPM-style diffusion model (U-Net)"),
        ("noisy-classifier", "train a classifier on noisy images x_t, for classifier guidance"),
    ):
        train = commands.train.add_parser(
            name,
            help=helptext,
            description=f"{helptext[0].upper()}{helptext[1:]}. The defaults shown are the "
            "shapes preset's (another --preset brings its own).",
        )
        train.add_argument(
            "--data",
            default="shapes",
            help="shapes (the built-in world) | PATH to a folder of images",
        )
        train.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            default="shapes",
            help="named config (default shapes: the 30-minute recipe; tiny: a smoke test)",
        )
        train.add_argument(
            "--schedule",
            dest="beta_schedule",
            choices=BETA_SCHEDULES,
            default=None,
            help="beta schedule: linear | scaled_linear | cosine (default: the preset's; "
            "shapes: cosine, tiny: linear)",
        )
        train.add_argument(
            "--num-train-timesteps",
            type=field_type(DiffusionConfig, "num_train_timesteps"),
            default=1000,
            help="steps of the forward (noising) process",
        )
        train.add_argument(
            "--n-train",
            type=positive_int,
            default=20000,
            help="shapes images to draw for training (default 20000)",
        )
        train.add_argument(
            "--out", type=Path, default=None, help=f"run directory (default runs/{name})"
        )
        train.add_argument("--resume", action="store_true", help="continue the run in --out")
        train.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "diffusion":
            train.add_argument(
                "--cond",
                dest="conditioning",
                choices=CONDITIONINGS,
                default="none",
                help="none | class ((colour, shape) label with a null label)",
            )
            train.add_argument(
                "--objective",
                dest="prediction_type",
                choices=PREDICTION_TYPES,
                default=None,
                help="epsilon | sample | v_prediction (default: the preset's; "
                "shapes: v_prediction, tiny: epsilon)",
            )
            train.add_argument(
                "--min-snr-gamma",
                type=field_type(DiffusionConfig, "min_snr_gamma"),
                default=0.0,
                help="min-SNR-gamma loss weighting (e.g. 5); 0 disables",
            )
            train.add_argument(
                "--label-embedding",
                choices=("factored", "joint"),
                default="factored",
                help="factored: one embedding per colour and per shape, summed (default); "
                "joint: one per (colour, shape) class",
            )
            train.add_argument(
                "--cond-drop-prob",
                type=field_type(DiffusionConfig, "cond_drop_prob"),
                default=0.1,
                help="how often the label is dropped for CFG (default 0.1)",
            )
        else:
            train.add_argument(
                "--clean",
                action="store_true",
                help="train on clean images only (t = 0): the first stage of a warm start",
            )
            train.add_argument(
                "--init-from",
                type=Path,
                default=None,
                metavar="CLEAN_RUN",
                help="start from a classifier trained with --clean, the same at every t at "
                "the first step (its time embedding held at t = 0's), then fine-tune on x_t",
            )
        shapes, source = PRESETS["shapes"], "the shapes preset's"
        add_dataclass_flags(
            train,
            UNetConfig,
            exclude=UNET_EXCLUDE,
            title="U-Net",
            defaults=shapes.model.unet,
            source=source,
        )
        add_dataclass_flags(
            train, TrainConfig, title="training", defaults=shapes.train, source=source
        )
        train.set_defaults(func=train_diffusion if name == "diffusion" else train_classifier)


# -- training --------------------------------------------------------------------------------


def _configs(args: argparse.Namespace) -> tuple[UNetConfig, TrainConfig]:
    """The preset's configs with the command line's flags applied; fills the preset's
    schedule (and objective) into `args` where the command line left them out."""
    preset = diffusion_recipes.preset(args.preset)
    if args.beta_schedule is None:
        args.beta_schedule = preset.model.beta_schedule
    if "prediction_type" in vars(args) and args.prediction_type is None:  # (a classifier has none)
        args.prediction_type = preset.model.prediction_type
    unet = dataclass_from_args(UNetConfig, args, preset.model.unet)
    train = train_config_from_args(args, preset.train)
    unet.validate()  # a U-Net that does not fit, before drawing 20,000 images
    return unet, train


def _load_data(args: argparse.Namespace, image_size: int, seed: int):
    from tinygen.data.image_data import ImageData

    return ImageData(args.data, image_size=image_size, n_train=args.n_train, seed=seed)


def train_diffusion(args: argparse.Namespace) -> int:
    unet, train_config = _configs(args)
    data = _load_data(args, unet.image_size, train_config.seed)
    config = DiffusionConfig(
        unet=unet,
        beta_schedule=args.beta_schedule,
        num_train_timesteps=args.num_train_timesteps,
        prediction_type=args.prediction_type,
        conditioning=args.conditioning,
        num_classes=data.num_classes or 48,
        label_factors=data.label_factors if args.label_embedding == "factored" else (),
        cond_drop_prob=args.cond_drop_prob,
        min_snr_gamma=args.min_snr_gamma,
    )
    out = args.out or Path("runs/diffusion")
    result = diffusion_recipes.train_diffusion(
        config, train_config, data, out, resume=args.resume, progress=not args.no_progress
    )
    return finish_training(result, out, f"sample with: tinygen sample diffusion --run {out}")


def train_classifier(args: argparse.Namespace) -> int:
    from tinygen.models.noisy_classifier import NoisyClassifierConfig

    unet, train_config = _configs(args)
    data = _load_data(args, unet.image_size, train_config.seed)
    config = NoisyClassifierConfig(
        unet=unet,
        num_classes=data.num_classes or 48,
        beta_schedule=args.beta_schedule,
        num_train_timesteps=args.num_train_timesteps,
    )
    out = args.out or Path("runs/noisy-classifier")
    result = diffusion_recipes.train_noisy_classifier(
        config,
        train_config,
        data,
        out,
        resume=args.resume,
        progress=not args.no_progress,
        clean=args.clean,
        init_from=args.init_from,
    )
    return finish_training(result, out, f"guide with: --classifier {out}")
