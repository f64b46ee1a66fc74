"""The shapes world on the command line.

`tinygen train evaluator`  train the shapes evaluator and install it where
                           tinygen.eval.prompt_fidelity finds it (~/.cache/tinygen/evaluator)
`tinygen eval evaluator`   its per-attribute accuracy on clean and noisy test images
`tinygen sample shapes`    a grid of generated shapes images, to look at the world
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    checked,
    comma_list,
    dataclass_from_args,
    non_negative_float,
    non_negative_int,
    positive_int,
    train_config_from_args,
)
from tinygen.models.shapes_evaluator import EvaluatorConfig
from tinygen.recipes.evaluator import PRESETS
from tinygen.train.config import TrainConfig


def register(commands) -> None:
    train = commands.train.add_parser(
        "evaluator",
        help="train the shapes evaluator (judges generated shapes images)",
        description="Train the CNN that reads shape, colour, size and position from shapes "
        "images, then install it for tinygen.eval.prompt_fidelity. The defaults shown are the "
        "evaluator recipe's.",
    )
    train.add_argument(
        "--out",
        type=Path,
        default=Path("runs/evaluator"),
        help="run directory (default runs/evaluator)",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--install",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="copy the trained evaluator to ~/.cache/tinygen/evaluator, the judge every eval "
        "uses (default: only if none is installed yet; --install replaces one)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    recipe, source = PRESETS["default"], "the evaluator recipe's"
    add_dataclass_flags(train, EvaluatorConfig, title="model", defaults=recipe.model, source=source)
    add_dataclass_flags(train, TrainConfig, title="training", defaults=recipe.train, source=source)
    train.set_defaults(func=train_evaluator)

    evaluate = commands.eval.add_parser(
        "evaluator",
        help="per-attribute accuracy of a shapes evaluator, clean and noisy",
        description="Accuracy of the shapes evaluator on test images, under Gaussian noise.",
    )
    evaluate.add_argument(
        "--run",
        type=Path,
        default=None,
        help="evaluator run directory (default: the installed one)",
    )
    evaluate.add_argument("--n", type=positive_int, default=2000, help="test images (default 2000)")
    evaluate.add_argument(
        "--noise",
        type=comma_list(non_negative_float),
        default=[0.0, 0.05, 0.1, 0.2],
        help="comma-separated noise std in [-1, 1] units",
    )
    evaluate.add_argument(
        "--split",
        default="test",
        choices=("test", "heldout"),
        help="test images of the seen (colour, shape) pairs, or of the held-out ones",
    )
    evaluate.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the test images"
    )
    evaluate.set_defaults(func=eval_evaluator)

    sample = commands.sample.add_parser(
        "shapes",
        help="save a grid of shapes-world images",
        description="Generate shapes images and save them as one PNG grid; prints prompts.",
    )
    sample.add_argument("--n", type=positive_int, default=16, help="images (default 16)")
    sample.add_argument("--out", type=Path, default=Path("shapes.png"), help="PNG path")
    sample.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "heldout", "evaluator"),
        help="which part of the world the images come from",
    )
    sample.add_argument("--seed", type=non_negative_int, default=0, help="seed of the images")
    sample.add_argument(
        "--image-size", type=checked(int, min=16), default=32, help="pixels per side"
    )
    sample.add_argument("--two-objects", action="store_true", help="scenes with a relation")
    sample.add_argument(
        "--scale", type=positive_int, default=4, help="pixel magnification (default 4)"
    )
    sample.set_defaults(func=sample_shapes)


def train_evaluator(args: argparse.Namespace) -> int:
    from tinygen.recipes.common import interrupted, is_main_process
    from tinygen.recipes.evaluator import train_evaluator as train

    preset = PRESETS["default"]
    result, accuracy, installed = train(
        dataclass_from_args(EvaluatorConfig, args, preset.model),
        train_config_from_args(args, preset.train),
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        install=args.install,
    )
    if interrupted(result, args.out):
        return 130
    if not is_main_process():
        return 0
    shown = ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
    print(f"done: step {result.step}; clean test accuracy {shown} -> {args.out}", file=sys.stderr)
    if installed is not None:
        print(
            f"installed to {installed} (tinygen.eval.prompt_fidelity loads it from there)",
            file=sys.stderr,
        )
    return 0


def eval_evaluator(args: argparse.Namespace) -> int:
    from tinygen.eval.fidelity import load_evaluator
    from tinygen.recipes.evaluator import accuracy_under_noise

    sigmas = tuple(args.noise)
    model = load_evaluator(args.run)
    table = accuracy_under_noise(model, n=args.n, sigmas=sigmas, split=args.split, seed=args.seed)
    for sigma, accuracy in table.items():
        print(
            json.dumps(
                {
                    "split": args.split,
                    "n": args.n,
                    "noise_std": sigma,
                    **{k: round(v, 4) for k, v in accuracy.items()},
                }
            )
        )
    return 0


def sample_shapes(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.data.shapes import generate_shapes
    from tinygen.io import check_output_file

    args.out = check_output_file(args.out, "--out")

    batch = generate_shapes(
        args.n,
        split=args.split,
        seed=args.seed,
        image_size=args.image_size,
        two_objects=args.two_objects,
    )
    path = save_image_grid(batch.images, args.out, scale=args.scale)
    for i, prompt in enumerate(batch.prompts):
        print(f"{i:3d}  {prompt}")
    print(f"saved {args.n} images to {path}", file=sys.stderr)
    return 0
