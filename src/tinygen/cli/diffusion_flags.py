"""The flags `sample diffusion` and `eval diffusion` share (the run, the sampler's settings,
classifier guidance), the rules that tie them together, and the `SamplerConfig` they make;
and the noise-schedule flags of the text-to-image trainers."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.cli.common import field_type, non_negative_int
from tinygen.diffusion.sampling import SamplerConfig
from tinygen.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES
from tinygen.errors import TinygenError

STEPS = field_type(SamplerConfig, "steps")  # sampling steps, checked as SamplerConfig does


def add_schedule_flags(train: argparse.ArgumentParser) -> None:
    """--schedule and --objective, defaulting to the preset's (None until then)."""
    train.add_argument(
        "--schedule",
        dest="beta_schedule",
        choices=BETA_SCHEDULES,
        default=None,
        help="beta schedule (default: the preset's; shapes: cosine)",
    )
    train.add_argument(
        "--objective",
        dest="prediction_type",
        choices=PREDICTION_TYPES,
        default=None,
        help="what the U-Net predicts (default: the preset's; shapes: v_prediction)",
    )


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="diffusion run directory")
    parser.add_argument(
        "--checkpoint",
        choices=("ema", "best", "last"),
        default="ema",
        help="weights to load (default ema; falls back to last without EMA)",
    )
    parser.add_argument(
        "--eta",
        type=field_type(SamplerConfig, "eta"),
        default=None,
        help="DDIM only: noise per step, 0 deterministic, 1 DDPM's variance (default 0)",
    )
    parser.add_argument(
        "--spacing",
        choices=("leading", "trailing", "linspace"),
        default="leading",
        help="which training timesteps the steps visit: leading (0, k, 2k, ...; default, as "
        "diffusers), trailing (down from T - 1: the first step starts from the noisiest one) "
        "or linspace",
    )
    parser.add_argument(
        "--thresholding",
        action="store_true",
        help="dynamic thresholding of the predicted x_0 (Imagen) instead of clipping",
    )
    parser.add_argument(
        "--no-recompute-eps",
        dest="recompute_eps",
        action="store_false",
        help="DDIM: keep the model's own eps after clipping x_0 (diffusers' default) instead "
        "of recomputing it from the clipped x_0; drifts to wrong colours under strong guidance",
    )
    parser.add_argument(
        "--classifier", type=Path, default=None, help="noisy-classifier run for classifier guidance"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the noise (default 0)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def check_flag_pairs(args: argparse.Namespace) -> None:
    """Flags that mean something only beside another: refused, not silently ignored."""
    if args.eta is not None and getattr(args, "sampler", "ddim") != "ddim":
        raise TinygenError("--eta applies to --sampler ddim only (DDPM's noise is fixed)")
    one = "classifier_scale" in vars(args)  # sample: one scale; eval: a sweep of them
    scales = args.classifier_scale if one else args.classifier_scales
    flag = "--classifier-scale" if one else "--classifier-scales"
    if scales is not None and args.classifier is None:
        raise TinygenError(f"{flag} needs --classifier (a noisy-classifier run to guide with)")
    if args.classifier is not None and scales is None and not one:
        raise TinygenError("--classifier needs --classifier-scales (e.g. 0,1,2,4,8)")


def or_default(value, default):
    return default if value is None else value


def sampler_config(args: argparse.Namespace, sampler: str = "ddim", steps: int = 50):
    return SamplerConfig(
        sampler=sampler,
        steps=steps,
        eta=or_default(args.eta, 0.0),
        spacing=args.spacing,
        thresholding=args.thresholding,
        recompute_eps=args.recompute_eps,
    )
