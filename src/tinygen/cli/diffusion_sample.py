"""`tinygen sample diffusion` (a grid, a denoising strip, SDEdit from --init-image) and
`tinygen eval diffusion` (fidelity and feature distance over sampler settings): flags, then
a call into `tinygen.recipes.diffusion_sampling`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.recipes.diffusion_sampling import parse_labels


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def register(commands) -> None:
    sample = commands.sample.add_parser(
        "diffusion",
        help="draw images from a trained diffusion run",
        description="Draw a grid of samples and a denoising strip (x_t and predicted x_0).",
    )
    _add_sampling_flags(sample)
    sample.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    sample.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    sample.add_argument(
        "--guidance",
        type=float,
        default=2.0,
        help="classifier-free guidance scale (class models; default 2)",
    )
    sample.add_argument("--classifier-scale", type=float, default=1.0)
    sample.add_argument(
        "--label",
        default=None,
        help='class to draw, e.g. "red circle" (comma-separate several); '
        "default: cycle through the classes",
    )
    sample.add_argument("--n", type=int, default=16, help="images (default 16)")
    sample.add_argument(
        "--init-image",
        type=Path,
        default=None,
        help="image-to-image (SDEdit): start from this picture (PNG/JPEG; resized to the "
        "model's size) noised part-way instead of from pure noise",
    )
    sample.add_argument(
        "--strength",
        type=float,
        default=None,
        help="with --init-image: how far up the chain to noise it, in [0, 1] (0 keeps the "
        "image, 1 ignores it; default 0.6)",
    )
    sample.add_argument("--out", type=Path, default=Path("grid.png"))
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
    _add_sampling_flags(evaluate)
    evaluate.add_argument("--guidance", type=_floats, default=[0.0, 1.0, 2.0, 4.0])
    evaluate.add_argument("--steps", type=_ints, default=[10, 25, 50, 1000])
    evaluate.add_argument(
        "--classifier-scales",
        type=_floats,
        default=None,
        help="with --classifier: sweep these scales (e.g. 0,1,2,4,8)",
    )
    evaluate.add_argument("--n", type=int, default=256, help="images per setting")
    evaluate.add_argument(
        "--n-ddpm",
        type=int,
        default=None,
        help="images for full-length DDPM settings (default --n)",
    )
    evaluate.add_argument("--batch-size", type=int, default=256)
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
    evaluate.add_argument("--out", type=Path, default=None, help="default RUN/eval")
    evaluate.set_defaults(func=eval_diffusion)


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="diffusion run directory")
    parser.add_argument(
        "--checkpoint",
        choices=("ema", "best", "last"),
        default="ema",
        help="weights to load (default ema; falls back to last without EMA)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1]")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


# -- sampling and evaluation ---------------------------------------------------------------


def _load(args: argparse.Namespace):
    from tinygen.recipes.diffusion_sampling import load_diffusion_run
    from tinygen.train.device import resolve_device

    device = resolve_device(args.device)
    model, classifier = load_diffusion_run(
        args.run, which=args.checkpoint, device=device, classifier=args.classifier
    )
    return model, classifier, device


def _sampler(args: argparse.Namespace, sampler: str = "ddim", steps: int = 50):
    from tinygen.diffusion.sampling import SamplerConfig

    return SamplerConfig(
        sampler=sampler,
        steps=steps,
        eta=args.eta,
        spacing=args.spacing,
        thresholding=args.thresholding,
        recompute_eps=args.recompute_eps,
    )


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

    if args.n <= 0:
        raise TinygenError(f"--n must be positive, got {args.n}")
    if args.strength is not None and args.init_image is None:
        raise TinygenError("--strength needs --init-image (the picture to start from)")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise TinygenError(f"--strength must be in [0, 1] (0 keeps the image), got {args.strength}")
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
        classifier_scale=args.classifier_scale if classifier is not None else 0.0,
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

    wanted = args.out or args.run / "eval"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "eval.json")
    if out != wanted:  # hours of sampling are never replaced without a word
        print(f"{wanted} holds an earlier evaluation; this one goes to {out}", file=sys.stderr)
    model, classifier, device = _load(args)
    evaluator = load_evaluator(args.evaluator, device=device)
    total = model.config.num_train_timesteps
    if classifier is not None and args.classifier_scales is None:
        raise TinygenError("--classifier needs --classifier-scales (e.g. 0,1,2,4,8)")
    settings = sweep_settings(
        num_train_timesteps=total,
        class_conditional=model.config.class_conditional,
        guidance=args.guidance,
        steps=args.steps,
        classifier_scales=args.classifier_scales if classifier is not None else None,
        eta=args.eta,
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
