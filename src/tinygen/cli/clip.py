"""`tinygen train clip`, `tinygen eval clip`, `tinygen clip zero-shot`, `tinygen clip search`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.cli.common import (
    add_dataclass_flags,
    dataclass_from_args,
    finish_training,
    non_empty_text,
    non_negative_int,
    positive_int,
    train_config_from_args,
)
from tinygen.diffusion.schedule import BETA_SCHEDULES
from tinygen.errors import TinygenError
from tinygen.models.clip import CLIPConfig
from tinygen.recipes.clip import PRESETS
from tinygen.train.config import TrainConfig

HF_HELP = (
    "a transformers CLIPModel checkpoint instead of a run: a local directory, or a Hugging "
    "Face Hub name (openai/clip-vit-base-patch32; downloaded only then)"
)


def _model_flags(parser: argparse.ArgumentParser) -> None:
    """--run (our CLIP run) or --hf (a published CLIP), exactly one."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="CLIP run directory")
    which.add_argument("--hf", metavar="NAME_OR_DIR", help=HF_HELP)


def register(commands) -> None:
    train = commands.train.add_parser(
        "clip",
        help="train CLIP (contrastive image–text) on shapes or captioned images",
        description="Train CLIP. Any model or training field is a flag; the defaults shown "
        "are the shapes preset's (another --preset brings its own).",
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="shapes",
        help="named config (default shapes: the recipe of docs/benchmarks.md; tiny: a smoke test)",
    )
    train.add_argument(
        "--data",
        default="shapes",
        help="shapes (the built-in world) | PATH of a folder of captioned images",
    )
    train.add_argument(
        "--train-size",
        type=positive_int,
        default=20000,
        help="shapes images generated for training (default 20000)",
    )
    train.add_argument(
        "--val-size", type=positive_int, default=1000, help="validation pairs (shapes)"
    )
    train.add_argument(
        "--data-seed", type=non_negative_int, default=0, help="seed of the shapes data"
    )
    train.add_argument(
        "--noised",
        action="store_true",
        help="a noised CLIP for CLIP guidance (GLIDE): trained on x_t, t uniform, under --schedule",
    )
    train.add_argument(
        "--schedule",
        dest="noise_schedule",
        choices=BETA_SCHEDULES,
        default=None,
        help="with --noised: the guided diffusion model's beta schedule (default cosine)",
    )
    train.add_argument(
        "--num-train-timesteps", type=positive_int, default=1000, help="with --noised: T"
    )
    train.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CLIP_RUN",
        help="with --noised: fine-tune from this clean CLIP run (its weights and vocabulary; "
        "the timestep layer starts at zero) instead of random weights",
    )
    train.add_argument("--out", type=Path, default=None, help="run directory (default runs/clip)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    shapes, source = PRESETS["shapes"], "the shapes preset's"
    add_dataclass_flags(
        train,
        CLIPConfig,
        exclude=("vocab_size",),
        title="model",
        defaults=shapes.model,
        source=source,
    )
    add_dataclass_flags(train, TrainConfig, title="training", defaults=shapes.train, source=source)
    train.set_defaults(func=train_clip)

    evaluate = commands.eval.add_parser(
        "clip",
        help="zero-shot accuracy and retrieval of a CLIP run on the shapes world",
        description="Zero-shot classification (seen and held-out pairs) and image-text "
        "retrieval of a CLIP run, on freshly drawn shapes test images.",
    )
    evaluate.add_argument("--run", type=Path, required=True, help="CLIP run directory")
    evaluate.add_argument(
        "--n-test", type=positive_int, default=1000, help="test pairs (retrieval)"
    )
    evaluate.add_argument(
        "--checkpoint",
        choices=("best", "last", "ema"),
        default="best",
        help="weights: best (validation), last, or ema (when trained with --ema-decay)",
    )
    evaluate.set_defaults(func=eval_clip)

    root = commands.root.add_parser(
        "clip",
        help="use a trained CLIP: zero-shot, search",
        description="Use a trained CLIP run: classify images among labels, or search a folder.",
    )
    sub = root.add_subparsers(dest="clip_command", metavar="ACTION", required=True)
    zero = sub.add_parser(
        "zero-shot",
        help="classify images among text labels",
        description="Classify each image among the --labels (CLIP's zero-shot classifier).",
    )
    _model_flags(zero)
    zero.add_argument("--labels", required=True, help='comma-separated: "red circle,blue star"')
    zero.add_argument(
        "--template",
        action="append",
        default=None,
        help="prompt template with {} (repeatable; default: the run's own, {} for --hf)",
    )
    zero.add_argument("images", nargs="+", type=Path, help="image files")
    zero.set_defaults(func=zero_shot)
    search = sub.add_parser(
        "search",
        help="find the images that best match a text",
        description="Rank the images of a folder by their similarity to --text.",
    )
    _model_flags(search)
    search.add_argument(
        "--text", type=non_empty_text, required=True, help='what to look for, e.g. "red circle"'
    )
    search.add_argument("--images", type=Path, required=True, help="folder of images")
    search.add_argument("--top", type=positive_int, default=5, help="matches to show")
    search.add_argument("--grid", type=Path, default=None, help="save the matches as a PNG")
    search.set_defaults(func=search_images)


def build_configs(args: argparse.Namespace) -> tuple[CLIPConfig, TrainConfig]:
    preset = PRESETS[args.preset]
    return dataclass_from_args(CLIPConfig, args, preset.model), train_config_from_args(
        args, preset.train
    )


def train_clip(args: argparse.Namespace) -> int:
    from tinygen.recipes.clip import train_clip as train

    model_config, train_config = build_configs(args)
    if args.noise_schedule is not None and not args.noised:
        raise TinygenError("--schedule is for a noised CLIP; add --noised")
    if args.init_from is not None and not args.noised:
        raise TinygenError("--init-from is for a noised CLIP; add --noised")
    noised = {}
    if args.noised:
        from tinygen.recipes.clip_noised import train_noised_clip as train

        noised = {
            "beta_schedule": args.noise_schedule or "cosine",
            "num_train_timesteps": args.num_train_timesteps,
            "init_from": args.init_from,
        }
    out = args.out or Path("runs") / ("clip-noised" if args.noised else "clip")
    result = train(
        model_config,
        train_config,
        out,
        data=args.data,
        train_size=args.train_size,
        val_size=args.val_size,
        data_seed=args.data_seed,
        resume=args.resume,
        progress=not args.no_progress,
        **noised,
    )
    return finish_training(result, out, f"pictures in {out}; try: tinygen eval clip --run {out}")


def eval_clip(args: argparse.Namespace) -> int:
    from tinygen.recipes.clip import evaluate_shapes, load_clip

    model, tokenizer, config = load_clip(args.run, args.checkpoint)
    metrics = evaluate_shapes(
        model, tokenizer, n_test=args.n_test, image_size=config["model"]["image_size"]
    )
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}")
    return 0


def zero_shot(args: argparse.Namespace) -> int:
    import torch

    from tinygen.data.image_folder import load_image
    from tinygen.recipes.clip import load_clip, run_templates
    from tinygen.recipes.clip_pictures import classify_images

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise TinygenError(
            '--labels is empty; pass comma-separated labels, e.g. --labels "red circle,blue square"'
        )
    if args.hf is not None:
        from tinygen.recipes.pretrained_clip import load_pretrained_clip

        model, tokenizer, load_images = load_pretrained_clip(args.hf)
        templates, images = args.template or ["{}"], load_images(args.images)
    else:
        model, tokenizer, config = load_clip(args.run)
        templates = args.template or run_templates(config)
        size = config["model"]["image_size"]
        images = torch.stack([load_image(path, size) for path in args.images])
    probs = classify_images(model, tokenizer, images, labels, templates)
    for path, p in zip(args.images, probs):
        best = int(p.argmax())
        detail = ", ".join(f"{label} {q:.2f}" for label, q in zip(labels, p.tolist()))
        print(f"{path}: {labels[best]} ({detail})")
    return 0


def search_images(args: argparse.Namespace) -> int:
    from tinygen.io import check_output_file
    from tinygen.recipes.clip import load_clip
    from tinygen.recipes.clip_pictures import search_folder

    if args.grid is not None:
        args.grid = check_output_file(args.grid, "--grid")

    load_images, image_size = None, 0
    if args.hf is not None:
        from tinygen.recipes.pretrained_clip import load_pretrained_clip

        model, tokenizer, load_images = load_pretrained_clip(args.hf)
    else:
        model, tokenizer, config = load_clip(args.run)
        image_size = config["model"]["image_size"]
    matches = search_folder(
        model,
        tokenizer,
        args.images,
        args.text,
        image_size=image_size,
        k=args.top,
        grid=args.grid,
        load_images=load_images,
    )
    for rank, (path, score) in enumerate(matches, 1):
        print(f"{rank}. {path}  {score:.3f}")
    if args.grid is not None:
        print(f"grid saved to {args.grid}", file=sys.stderr)
    return 0
