"""`tinygen train autoencoder`, `tinygen reconstruct` and `tinygen eval autoencoder`: flags, then
calls into `tinygen.recipes.autoencoder` / `autoencoder_tools` (latent diffusion's first stage)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    finish_training,
    non_negative_int,
    positive_int,
    train_config_from_args,
)
from tinygen.models.autoencoder import AutoencoderConfig
from tinygen.models.autoencoder_loss import AutoencoderLossConfig
from tinygen.recipes import autoencoder as recipes
from tinygen.recipes.autoencoder import AutoencoderData
from tinygen.train.config import TrainConfig

# what --kind / --factor / the preset decide, or what belongs to the data
MODEL_EXCLUDE = (
    "in_channels",
    "channel_mult",
    "regularizer",
    "scaling_factor",
    "discriminator_channels",
    "asymmetric_padding",
    "quant_conv",
)


def register(commands) -> None:
    train = commands.train.add_parser(
        "autoencoder",
        help="train latent diffusion's first stage: a KL or VQ autoencoder",
        description="Train a KL- or VQ-regularised autoencoder on the 64 px shapes world (the "
        "first stage of latent diffusion, Rombach et al. 2022): L1 reconstruction plus the "
        "KL or codebook term, optionally a PatchGAN (--gan). At the end the run measures its "
        "latent scale factor (1 / std of the training latents) and stores it in config.json. "
        "The defaults shown are the shapes preset's.",
    )
    train.add_argument("--kind", choices=("kl", "vq"), default="kl", help="latent regulariser")
    train.add_argument("--factor", type=int, choices=(4, 8), default=4, help="downsampling f")
    train.add_argument(
        "--preset",
        choices=recipes.PRESET_NAMES,
        default="shapes",
        help="named config (default shapes: the CPU recipe, 4,000 steps; tiny: a smoke test)",
    )
    train.add_argument(
        "--gan",
        action="store_true",
        help=f"add the PatchGAN hinge loss with taming's adaptive weight (--gan-weight "
        f"{recipes.GAN_WEIGHT} unless given), after --gan-start warm-up steps",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/ae-KIND-fFACTOR)"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    shapes, source = recipes.PRESETS["shapes"], "the shapes preset's"
    add_dataclass_flags(train, AutoencoderData, title="data", defaults=shapes.data, source=source)
    add_dataclass_flags(
        train,
        AutoencoderConfig,
        exclude=MODEL_EXCLUDE,
        title="autoencoder",
        defaults=shapes.model("kl", 4),
        source=source + " (kl, f = 4)",
    )
    add_dataclass_flags(
        train, AutoencoderLossConfig, title="loss", defaults=shapes.loss, source=source
    )
    add_dataclass_flags(train, TrainConfig, title="training", defaults=shapes.train, source=source)
    train.set_defaults(func=train_autoencoder)

    rec = commands.root.add_parser(
        "reconstruct",
        help="an image through a trained autoencoder: input | reconstruction",
        description="Encode and decode --image with an autoencoder run and write the input "
        "and its reconstruction side by side. The image must have the run's size (64x64 for "
        "the shapes preset): another size is refused, not resized.",
    )
    rec.add_argument("--run", type=Path, required=True, help="an autoencoder run directory")
    rec.add_argument("--image", type=Path, required=True, help="an RGB PNG/JPEG of the run's size")
    rec.add_argument(
        "--out", type=Path, default=Path("reconstruction.png"), help="the side-by-side PNG"
    )
    rec.set_defaults(func=reconstruct)

    ev = commands.eval.add_parser(
        "autoencoder",
        help="PSNR, the judge's agreement on reconstructions, codebook use",
        description="Reconstruct --n test-split shapes images and report PSNR (mean ± s.e.), "
        "how often the shapes evaluator's verdict on the reconstruction equals its verdict on "
        "the original (all four attributes, and each), its accuracy against the true labels, "
        "the feature distance of reconstructions to originals, codebook perplexity and dead "
        "codes (vq) and the run's training time. Repeat --run for one table of several runs "
        "(e.g. L1 alone vs L1 + GAN). With --out, writes autoencoder_eval.json (one object, or "
        "a list for several runs) and autoencoder_eval.md (the table).",
    )
    ev.add_argument(
        "--run", type=Path, action="append", required=True, help="an autoencoder run (repeatable)"
    )
    ev.add_argument("--n", type=positive_int, default=1024, help="test images")
    ev.add_argument("--seed", type=non_negative_int, default=0, help="seed of the test images")
    ev.add_argument("--out", type=Path, default=None, help="folder for the json and markdown")
    ev.add_argument("--evaluator", type=Path, default=None, help="a shapes-evaluator run")
    ev.set_defaults(func=eval_autoencoder)


def train_autoencoder(args: argparse.Namespace) -> int:
    preset = recipes.preset(args.preset)
    data = dataclass_from_args(AutoencoderData, args, preset.data)
    config = dataclass_from_args(AutoencoderConfig, args, preset.model(args.kind, args.factor))
    loss = preset.loss
    if args.gan:
        loss = dataclasses.replace(loss, gan_weight=recipes.GAN_WEIGHT)
    loss = dataclass_from_args(AutoencoderLossConfig, args, loss)
    train_config = train_config_from_args(args, preset.train)
    out = args.out or Path(f"runs/ae-{args.kind}-f{args.factor}")
    result = recipes.train_autoencoder(
        config, train_config, data, loss, out, resume=args.resume, progress=not args.no_progress
    )
    code = finish_training(result, out, f"try: tinygen eval autoencoder --run {out} --out {out}")
    recipes.announce(result, out)
    return code


def reconstruct(args: argparse.Namespace) -> int:
    from tinygen.recipes.autoencoder_tools import reconstruct_file

    path = reconstruct_file(args.run, args.image, args.out)
    print(f"wrote {path} (input | reconstruction)", file=sys.stderr)
    return 0


def eval_autoencoder(args: argparse.Namespace) -> int:
    from tinygen import io
    from tinygen.recipes.autoencoder_tools import TABLE_HEADER, eval_run, markdown_row

    evaluator = None
    if args.evaluator is not None:
        from tinygen.eval.fidelity import load_evaluator

        evaluator = load_evaluator(args.evaluator)
    results = [eval_run(run, n=args.n, seed=args.seed, evaluator=evaluator) for run in args.run]
    table = "\n".join([TABLE_HEADER, *map(markdown_row, results)]) + "\n"
    if args.out is not None:
        io.write_json(
            args.out / "autoencoder_eval.json", results[0] if len(results) == 1 else results
        )
        io.atomic_write(args.out / "autoencoder_eval.md", lambda tmp: Path(tmp).write_text(table))
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    print(f"\n{table}", end="")
    return 0
