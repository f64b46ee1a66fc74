"""`tinygen train clip`, `tinygen eval clip`, `tinygen clip zero-shot`, `tinygen clip search`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from tinygen.cli.common import add_dataclass_flags, dataclass_from_args, interrupted
from tinygen.errors import TinygenError
from tinygen.models.clip import CLIPConfig
from tinygen.train.config import TrainConfig

PRESETS: dict[str, tuple[CLIPConfig, TrainConfig]] = {
    # The shapes-world recipe of docs/benchmarks.md (section clip): a ViT with 4x4 patches.
    "shapes": (
        CLIPConfig(
            embed_dim=64,
            vision_width=96,
            vision_layers=3,
            vision_heads=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
        ),
        TrainConfig(
            max_iters=2000,
            batch_size=128,
            learning_rate=2e-3,
            min_lr=1e-4,
            warmup_iters=100,
            weight_decay=0.1,
            eval_interval=500,
            eval_iters=4,
            log_interval=10,
        ),
    ),
    # A quick look (about a minute on a laptop CPU).
    "tiny": (
        CLIPConfig(
            embed_dim=32,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            text_width=32,
            text_layers=1,
            text_heads=2,
            patch_size=8,
        ),
        TrainConfig(
            max_iters=100,
            batch_size=64,
            learning_rate=2e-3,
            warmup_iters=10,
            eval_interval=50,
            eval_iters=2,
            log_interval=10,
        ),
    ),
}


def register(commands) -> None:
    train = commands.train.add_parser(
        "clip",
        help="train CLIP (contrastive image–text) on shapes or captioned images",
        description="Train CLIP. Any model or training field is a flag.",
    )
    train.add_argument("--preset", choices=sorted(PRESETS), default="shapes")
    train.add_argument(
        "--data",
        default="shapes",
        help="shapes (the built-in world) | PATH of a folder of captioned images",
    )
    train.add_argument(
        "--train-size",
        type=int,
        default=20000,
        help="shapes images generated for training (default 20000)",
    )
    train.add_argument("--val-size", type=int, default=1000, help="validation pairs (shapes)")
    train.add_argument("--data-seed", type=int, default=0, help="seed of the shapes data")
    train.add_argument("--out", type=Path, default=None, help="run directory (default runs/clip)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_flags(train, CLIPConfig, exclude=("vocab_size",), title="model")
    add_dataclass_flags(train, TrainConfig, title="training")
    train.set_defaults(func=train_clip)

    evaluate = commands.eval.add_parser(
        "clip", help="zero-shot accuracy and retrieval of a CLIP run on the shapes world"
    )
    evaluate.add_argument("--run", type=Path, required=True)
    evaluate.add_argument("--n-test", type=int, default=1000, help="test pairs (retrieval)")
    evaluate.add_argument("--checkpoint", choices=("best", "last", "ema"), default="best")
    evaluate.set_defaults(func=eval_clip)

    root = commands.root.add_parser("clip", help="use a trained CLIP: zero-shot, search")
    sub = root.add_subparsers(dest="clip_command", metavar="ACTION", required=True)
    zero = sub.add_parser("zero-shot", help="classify images among text labels")
    zero.add_argument("--run", type=Path, required=True)
    zero.add_argument("--labels", required=True, help='comma-separated: "red circle,blue star"')
    zero.add_argument(
        "--template",
        action="append",
        default=None,
        help="prompt template with {} (repeatable; default: the run's own)",
    )
    zero.add_argument("images", nargs="+", type=Path, help="image files")
    zero.set_defaults(func=zero_shot)
    search = sub.add_parser("search", help="find the images that best match a text")
    search.add_argument("--run", type=Path, required=True)
    search.add_argument("--text", required=True)
    search.add_argument("--images", type=Path, required=True, help="folder of images")
    search.add_argument("--top", type=int, default=5)
    search.add_argument("--grid", type=Path, default=None, help="save the matches as a PNG")
    search.set_defaults(func=search_images)


def build_configs(args: argparse.Namespace) -> tuple[CLIPConfig, TrainConfig]:
    base_model, base_train = PRESETS[args.preset]
    model_config = dataclass_from_args(CLIPConfig, args, base_model)
    train_config = dataclass_from_args(TrainConfig, args, base_train)
    return model_config, train_config


def _load_pairs(args: argparse.Namespace, image_size: int):
    """(train PairSet, val PairSet, data description) for --data."""
    from tinygen.models.clip_task import PairSet, shapes_pairs

    if args.data == "shapes":
        train = shapes_pairs(
            args.train_size, split="train", seed=args.data_seed, image_size=image_size
        )
        val = shapes_pairs(args.val_size, split="val", seed=args.data_seed, image_size=image_size)
        return (
            train,
            val,
            {
                "name": "shapes",
                "train_size": args.train_size,
                "val_size": args.val_size,
                "seed": args.data_seed,
            },
        )
    from tinygen.data.image_folder import ImageFolderDataset

    folder = ImageFolderDataset(args.data, image_size=image_size)
    n = len(folder)
    if n < 2:
        raise TinygenError(
            f"{args.data} holds {n} captioned image; CLIP needs at least 2 "
            "pairs (a contrastive batch), ideally thousands"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.data_seed))
    n_val = max(1, n // 10)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = PairSet(folder.images[train_idx], [folder.captions[i] for i in train_idx.tolist()])
    val = PairSet(folder.images[val_idx], [folder.captions[i] for i in val_idx.tolist()])
    return train, val, {"name": "folder", "path": str(args.data), "pairs": n, "val": n_val}


def train_clip(args: argparse.Namespace) -> int:
    from tinygen.data.caption_tokenizer import CaptionTokenizer, load_caption_tokenizer
    from tinygen.models.clip import CLIP
    from tinygen.models.clip_task import CLIPTask
    from tinygen.train.trainer import Trainer

    model_config, train_config = build_configs(args)
    out = args.out or Path("runs") / "clip"
    train, val, data = _load_pairs(args, model_config.image_size)
    if args.resume:
        tokenizer = load_caption_tokenizer(out)
    elif model_config.text_tower == "minilm":
        from tinygen.models.minilm_text import MiniLMTokenizer

        tokenizer = MiniLMTokenizer(context_length=32)
    else:
        tokenizer = CaptionTokenizer.from_captions(train.captions)
    model_config = dataclasses.replace(
        model_config, vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length
    )
    torch.manual_seed(train_config.seed)
    model = CLIP(model_config)
    shapes_eval = {"n_test": 1000, "seed": 0, "image_size": model_config.image_size}
    task = CLIPTask(
        model, tokenizer, train, val, shapes_eval=shapes_eval if data["name"] == "shapes" else None
    )
    run_config = {"model_type": "clip", "model": dataclasses.asdict(model_config), "data": data}
    if args.resume:
        from tinygen.train.runs import load_run_config

        if load_run_config(out)["model"] != run_config["model"]:
            raise TinygenError(
                f"cannot resume {out}: these flags give a different model "
                "config; repeat the original command plus --resume"
            )
    trainer = Trainer(
        task,
        train_config,
        out,
        run_config=run_config,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        tokenizer.save(out)
        print(
            f"CLIP with {model.num_params(trainable_only=True) / 1e6:.2f}M trainable "
            f"parameters, {len(train.captions):,} training pairs, vocabulary "
            f"{tokenizer.vocab_size} -> {out}",
            file=sys.stderr,
        )
    result = trainer.fit()
    if interrupted(result, out):
        return 130
    if trainer.dist.is_main:
        print(
            f"done: step {result.step}, best val loss {result.best_val_loss:.4f}; pictures "
            f"in {out}; try: tinygen eval clip --run {out}",
            file=sys.stderr,
        )
    return 0


def _load_clip(run: Path, which: str = "best"):
    from tinygen.data.caption_tokenizer import load_caption_tokenizer
    from tinygen.train.runs import load_model

    model, config = load_model(run, which=which)
    if config["model_type"] != "clip":
        raise TinygenError(
            f"{run} holds a {config['model_type']} model, not CLIP; pass the "
            "run directory of `tinygen train clip`"
        )
    return model, load_caption_tokenizer(run), config


def eval_clip(args: argparse.Namespace) -> int:
    from tinygen.models.clip_task import evaluate_shapes

    model, tokenizer, config = _load_clip(args.run, args.checkpoint)
    metrics = evaluate_shapes(
        model, tokenizer, n_test=args.n_test, image_size=config["model"]["image_size"]
    )
    for key, value in metrics.items():
        print(f"{key:24s} {value:.4f}")
    return 0


def zero_shot(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import load_image
    from tinygen.eval.zero_shot import encode_images, zero_shot_classifier

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise TinygenError(
            '--labels is empty; pass comma-separated labels, e.g. --labels "red circle,blue square"'
        )
    model, tokenizer, config = _load_clip(args.run)
    templates = args.template
    if templates is None:
        templates = ["{}"]
        if config.get("data", {}).get("name") == "shapes":
            from tinygen.models.clip_task import shapes_zero_shot_templates

            templates = shapes_zero_shot_templates()
    for template in templates:
        if "{}" not in template:
            raise TinygenError(f"--template {template!r} has no {{}} for the label")
    size = config["model"]["image_size"]
    images = torch.stack([load_image(path, size) for path in args.images])
    classifier = zero_shot_classifier(model, labels, templates, tokenizer=tokenizer)
    probs = (model.logit_scale.exp() * encode_images(model, images) @ classifier.T).softmax(-1)
    for path, p in zip(args.images, probs):
        best = int(p.argmax())
        detail = ", ".join(f"{label} {q:.2f}" for label, q in zip(labels, p.tolist()))
        print(f"{path}: {labels[best]} ({detail})")
    return 0


def search_images(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import IMAGE_EXTENSIONS, load_image
    from tinygen.models.clip_pictures import plot_retrieval_grid, top_matches

    if not args.images.is_dir():
        raise TinygenError(f"--images {args.images} is not a folder; pass a folder of images")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise TinygenError(f"{args.images} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    model, tokenizer, config = _load_clip(args.run)
    images = torch.stack([load_image(p, config["model"]["image_size"]) for p in files])
    index, scores = top_matches(model, tokenizer, images, [args.text], k=args.top)
    for rank, (i, score) in enumerate(zip(index[0].tolist(), scores[0].tolist()), 1):
        print(f"{rank}. {files[i]}  {score:.3f}")
    if args.grid is not None:
        plot_retrieval_grid(model, tokenizer, images, [args.text], args.grid, k=args.top)
        print(f"grid saved to {args.grid}", file=sys.stderr)
    return 0
