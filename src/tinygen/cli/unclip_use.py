"""`tinygen variations`, `tinygen interpolate` and `tinygen eval unclip`: what an unCLIP
decoder run does besides text-to-image (`tinygen generate` covers that)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tinygen.cli.common import comma_list, non_negative_int, positive_int
from tinygen.errors import TinygenError


def _add_run(
    parser: argparse.ArgumentParser, *, prior: bool = False, steps_flag: str = "--steps"
) -> None:
    parser.add_argument("--run", type=Path, required=True, help="the unCLIP decoder run")
    parser.add_argument(
        "--clip", type=Path, default=None, help="CLIP run (default: the decoder's components.json)"
    )
    if prior:
        parser.add_argument(
            "--prior", type=Path, default=None, help="prior run (default: components.json)"
        )
    parser.add_argument(
        "--checkpoint", choices=("ema", "best", "last"), default="ema", help="weights (ema)"
    )
    parser.add_argument("--guidance", type=float, default=3.0, help="decoder CFG scale (3)")
    parser.add_argument(
        steps_flag,
        dest="sampler_steps",
        metavar="N",
        type=positive_int,
        default=50,
        help="DDIM steps (50)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def register(commands) -> None:
    var = commands.root.add_parser(
        "variations",
        help="variations of an image: its CLIP image embedding decoded again",
        description="Decode the CLIP image embedding of --image --n times with DDIM at "
        "--eta > 0 (Ramesh et al. 2022, sec. 3.1): what CLIP sees is kept, the rest varies. "
        "Writes the source, then the variations, in one grid.",
    )
    _add_run(var)
    var.add_argument("--image", type=Path, required=True, help="the source picture (PNG)")
    var.add_argument("--n", type=positive_int, default=8, help="variations (8)")
    var.add_argument("--eta", type=float, default=1.0, help="DDIM noise, > 0 (1)")
    var.add_argument(
        "--from-inversion",
        action="store_true",
        help="start from the image's DDIM-inverted x_T instead of fresh noise",
    )
    var.add_argument("--out", type=Path, default=Path("variations.png"), help="grid (PNG)")
    var.set_defaults(func=variations)

    interp = commands.root.add_parser(
        "interpolate",
        help="interpolate between two images in CLIP space",
        description="Slerp between the CLIP image embeddings of two images and decode each "
        "point with the same noise (deterministic DDIM). Writes one strip.",
    )
    _add_run(interp, steps_flag="--ddim-steps")
    interp.add_argument(
        "--image", type=Path, action="append", required=True, help="an end image (give two)"
    )
    interp.add_argument(
        "--steps",
        dest="frames",
        metavar="N",
        type=positive_int,
        default=8,
        help="interpolation points, both ends' decodings included (8)",
    )
    interp.add_argument("--out", type=Path, default=Path("interpolation.png"), help="strip (PNG)")
    interp.set_defaults(func=interpolate)

    ev = commands.eval.add_parser(
        "unclip",
        help="the unCLIP figures: prior, ablation, pairs, reranking, variations",
        description="Measure an unCLIP decoder run with the shapes evaluator, part by part "
        "(see tinygen.eval.unclip_eval): writes unclip.json and unclip.md into --out.",
    )
    _add_run(ev, prior=True)
    ev.add_argument(
        "--parts",
        type=comma_list(str),
        default=["prior", "ablation", "pairs", "rerank", "variations"],
        help="comma-separated parts: prior,ablation,pairs,rerank,variations (default all)",
    )
    ev.add_argument("--glide", type=Path, default=None, help="a GLIDE run to compare with")
    ev.add_argument("--n", type=positive_int, default=256, help="images per row (256)")
    ev.add_argument("--per-prompt", type=positive_int, default=4, help="images per prompt (4)")
    ev.add_argument("--prior-guidance", type=float, default=1.0, help="prior CFG scale (1)")
    ev.add_argument("--rerank", type=positive_int, default=2, help="prior candidates (2)")
    ev.add_argument("--eta", type=float, default=1.0, help="DDIM noise of variations (1)")
    ev.add_argument("--batch-size", type=positive_int, default=64, help="sampling batch (64)")
    ev.add_argument("--out", type=Path, default=None, help="report directory (RUN/eval-unclip)")
    ev.set_defaults(func=eval_unclip)


def _load(args: argparse.Namespace, **options):
    from tinygen.recipes.unclip import load_unclip
    from tinygen.train.device import resolve_device

    device = resolve_device(args.device)
    return load_unclip(
        args.run, which=args.checkpoint, device=device, clip=args.clip,
        prior=getattr(args, "prior", None), **options,
    )  # fmt: skip


def variations(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.text2image import load_exact_image

    out = check_output_file(args.out, "--out", (".png",))
    if args.eta <= 0 or args.eta > 1:
        raise TinygenError(f"--eta must be in (0, 1] for variations, got {args.eta}")
    pipeline = _load(args)
    image = load_exact_image(args.image, pipeline.image_size)
    result = pipeline.variations(
        image, args.n, eta=args.eta, from_inversion=args.from_inversion, guidance=args.guidance,
        steps=args.sampler_steps, generator=torch.Generator().manual_seed(args.seed),
        progress=True,
    ).cpu()  # fmt: skip
    save_image_grid(torch.cat([image, result]), out, nrow=min(9, args.n + 1), scale=4)
    print(f"wrote {out}: the source, then {args.n} variations", file=sys.stderr)
    return 0


def interpolate(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.text2image import load_exact_image

    if len(args.image) != 2:
        raise TinygenError(f"give exactly two --image (the two ends), got {len(args.image)}")
    if args.frames < 2:
        raise TinygenError(f"--steps must be >= 2 (both ends), got {args.frames}")
    out = check_output_file(args.out, "--out", (".png",))
    pipeline = _load(args)
    a, b = (load_exact_image(path, pipeline.image_size) for path in args.image)
    strip = pipeline.interpolate(
        a, b, args.frames, guidance=args.guidance, sampler_steps=args.sampler_steps,
        generator=torch.Generator().manual_seed(args.seed),
    ).cpu()  # fmt: skip
    save_image_grid(torch.cat([a, strip, b]), out, nrow=args.frames + 2, scale=4)
    print(f"wrote {out}: image a | {args.frames} interpolated | image b", file=sys.stderr)
    return 0


def eval_unclip(args: argparse.Namespace) -> int:
    from tinygen.eval.unclip_eval import UnclipEvalSettings, evaluate_unclip
    from tinygen.eval.unclip_report import write_unclip_report
    from tinygen.io import check_writable_dir, next_free_dir
    from tinygen.recipes.clip import shapes_zero_shot_templates
    from tinygen.recipes.text2image import load_text2image

    settings = UnclipEvalSettings(
        n=args.n, per_prompt=args.per_prompt, guidance=args.guidance, steps=args.sampler_steps,
        batch_size=args.batch_size, seed=args.seed, eta=args.eta,
    )  # fmt: skip
    settings.validate()
    wanted = args.out or args.run / "eval-unclip"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "unclip.json")
    pipeline = _load(args, prior_guidance=args.prior_guidance, rerank=args.rerank)
    glide = load_text2image(args.glide, device=pipeline.device) if args.glide else None
    report = evaluate_unclip(
        pipeline, args.parts, settings, glide=glide, templates=shapes_zero_shot_templates(),
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    report["runs"] = {**pipeline.names, "glide": str(args.glide) if args.glide else None}
    paths = write_unclip_report(report, out, title=str(args.run))
    print(paths["table"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
