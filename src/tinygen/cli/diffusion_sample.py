"""`tinygen sample diffusion` (a grid, a denoising strip, SDEdit from --init-image) and
`tinygen eval diffusion` (fidelity and feature distance over sampler settings): flags, then
a call into `tinygen.recipes.diffusion_sampling`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.cli.common import comma_list, non_negative_float, positive_int, unit_interval
from tinygen.cli.diffusion_flags import STEPS, add_sampling_flags, check_flag_pairs, or_default
from tinygen.cli.diffusion_flags import sampler_config as _sampler
from tinygen.errors import TinygenError
from tinygen.recipes.diffusion_sampling import parse_labels


def register(commands) -> None:
    sample = commands.sample.add_parser(
        "diffusion",
        help="draw images from a trained diffusion run",
        description="Draw a grid of samples and a denoising strip (x_t and predicted x_0).",
    )
    add_sampling_flags(sample)
    sample.add_argument(
        "--sampler", choices=("ddpm", "ddim"), default="ddim", help="reverse process (default ddim)"
    )
    sample.add_argument("--steps", type=STEPS, default=50, help="sampling steps (default 50)")
    sample.add_argument(
        "--guidance",
        type=non_negative_float,
        default=2.0,
        help="classifier-free guidance scale (class models; default 2)",
    )
    sample.add_argument(
        "--classifier-scale",
        type=non_negative_float,
        default=None,
        help="with --classifier: strength of classifier guidance (default 1)",
    )
    sample.add_argument(
        "--label",
        default=None,
        help='class to draw, e.g. "red circle" (comma-separate several); '
        "default: cycle through the classes",
    )
    sample.add_argument("--n", type=positive_int, default=16, help="images (default 16)")
    sample.add_argument(
        "--init-image",
        type=Path,
        default=None,
        help="image-to-image (SDEdit): start from this picture (PNG/JPEG; resized to the "
        "model's size) noised part-way instead of from pure noise",
    )
    sample.add_argument(
        "--strength",
        type=unit_interval,
        default=None,
        help="with --init-image: how far up the chain to noise it, in [0, 1] (0 keeps the "
        "image, 1 ignores it; default 0.6)",
    )
    sample.add_argument("--out", type=Path, default=Path("grid.png"), help="grid picture (PNG)")
    sample.add_argument(
        "--strip", type=Path, default=None, help="denoising strip picture (default OUT_strip.png)"
    )
    sample.set_defaults(func=sample_diffusion)

    evaluate = commands.eval.add_parser(
        "diffusion",
        help="prompt fidelity and feature distance over sampling settings",
        description="Fidelity (shapes evaluator) and feature distance for every guidance x "
        "steps combination; steps equal to the training steps use DDPM, fewer "
        "DDIM. Writes eval.json, eval.md and fidelity_diversity.png.",
    )
    add_sampling_flags(evaluate)
    evaluate.add_argument(
        "--guidance",
        type=comma_list(non_negative_float),
        default=[0.0, 1.0, 2.0, 4.0],
        help="comma-separated classifier-free guidance scales to sweep",
    )
    evaluate.add_argument(
        "--steps",
        type=comma_list(STEPS),
        default=[10, 25, 50, 1000],
        help="comma-separated step counts to sweep (the training steps: DDPM)",
    )
    evaluate.add_argument(
        "--classifier-scales",
        type=comma_list(non_negative_float),
        default=None,
        help="with --classifier: sweep these scales (e.g. 0,1,2,4,8)",
    )
    evaluate.add_argument("--n", type=positive_int, default=256, help="images per setting")
    evaluate.add_argument(
        "--n-ddpm",
        type=positive_int,
        default=None,
        help="images for full-length DDPM settings (default --n)",
    )
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=256, help="images sampled at once"
    )
    evaluate.add_argument(
        "--split",
        choices=("val", "heldout"),
        default="val",
        help="prompts and real images from the val split (the training distribution) or "
        "from the held-out (colour, shape) pairs the model never saw (default val)",
    )
    evaluate.add_argument(
        "--evaluator",
        type=Path,
        default=None,
        help="evaluator run (default: $TINYGEN_EVALUATOR, the cache, runs/evaluator)",
    )
    evaluate.add_argument(
        "--out", type=Path, default=None, help="report directory (default RUN/eval)"
    )
    evaluate.set_defaults(func=eval_diffusion)


# -- sampling and evaluation ---------------------------------------------------------------


def _load(args: argparse.Namespace):
    from tinygen.recipes.diffusion_sampling import load_diffusion_run
    from tinygen.train.device import resolve_device

    device = resolve_device(args.device)
    model, classifier = load_diffusion_run(
        args.run, which=args.checkpoint, device=device, classifier=args.classifier
    )
    return model, classifier, device


def sample_diffusion(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.diffusion_sampling import (
        load_init_image,
        sample_with_strip,
        untrained_labels_warning,
    )

    args.out = check_output_file(args.out, "--out")  # before the sampling, not after it
    if args.strip is not None:
        args.strip = check_output_file(args.strip, "--strip")

    check_flag_pairs(args)
    if args.strength is not None and args.init_image is None:
        raise TinygenError("--strength needs --init-image (the picture to start from)")
    sampler = _sampler(args, args.sampler, args.steps)  # bad settings fail before any loading
    model, classifier, device = _load(args)
    uses_labels = model.config.class_conditional or classifier is not None
    if args.label is not None and not uses_labels:
        raise TinygenError("this model is unconditional; --label needs --classifier RUN")
    labels = parse_labels(args.label, args.n) if uses_labels else None
    if warning := untrained_labels_warning(model, labels):
        print(warning, file=sys.stderr)
    init = load_init_image(args.init_image, model, args.n) if args.init_image else None
    samples = sample_with_strip(
        model,
        args.n,
        sampler=sampler,
        labels=labels,
        guidance=args.guidance,
        classifier=classifier,
        classifier_scale=0.0 if classifier is None else or_default(args.classifier_scale, 1.0),
        init_image=init,
        strength=args.strength if args.strength is not None else (0.6 if init is not None else 1.0),
        seed=args.seed,
    )
    save_image_grid(samples.images, args.out, scale=4)
    strip_path = args.strip or args.out.with_name(args.out.stem + "_strip.png")
    save_image_grid(samples.strip, strip_path, nrow=len(samples.strip) // 2, scale=4)
    print(
        f"wrote {args.out} ({args.n} images) and {strip_path} (top: x_t, bottom: predicted "
        f"x_0, over {args.steps} {args.sampler} steps)",
        file=sys.stderr,
    )
    return 0


def eval_diffusion(args: argparse.Namespace) -> int:
    from tinygen.eval.diffusion_eval import evaluate_settings, write_report
    from tinygen.eval.fidelity import load_evaluator
    from tinygen.io import check_writable_dir, next_free_dir
    from tinygen.recipes.diffusion_sampling import sweep_settings

    check_flag_pairs(args)
    wanted = args.out or args.run / "eval"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "eval.json")
    if out != wanted:  # hours of sampling are never replaced without a word
        print(f"{wanted} holds an earlier evaluation; this one goes to {out}", file=sys.stderr)
    model, classifier, device = _load(args)
    total = model.config.num_train_timesteps
    if args.eta is not None and all(steps == total for steps in args.steps):
        raise TinygenError(f"--eta applies to DDIM settings only; every --steps is {total} (DDPM)")
    evaluator = load_evaluator(args.evaluator, device=device)
    settings = sweep_settings(
        num_train_timesteps=total,
        class_conditional=model.config.class_conditional,
        guidance=args.guidance,
        steps=args.steps,
        classifier_scales=args.classifier_scales if classifier is not None else None,
        eta=or_default(args.eta, 0.0),
        thresholding=args.thresholding,
        recompute_eps=args.recompute_eps,
        spacing=args.spacing,
    )
    n_for = {total: args.n_ddpm} if args.n_ddpm else None
    rows = evaluate_settings(
        model,
        settings,
        n=args.n,
        n_for=n_for,
        evaluator=evaluator,
        classifier=classifier,
        batch_size=args.batch_size,
        seed=args.seed,
        split=args.split,
        log=lambda line: print(line, file=sys.stderr),
    )
    paths = write_report(rows, out, title=str(args.run))
    print(paths["table"].read_text())
    print(f"wrote {paths['json']}, {paths['table']} and {paths['plot']}", file=sys.stderr)
    return 0
