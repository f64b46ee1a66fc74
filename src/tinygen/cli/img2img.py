"""`tinygen img2img --run DIR` (image-to-image on our own runs: latent diffusion, GLIDE, the
shapes world's class-conditional pixel diffusion) and `tinygen eval img2img` (the strength
trade-off). The `img2img` parser itself is cli/stable_diffusion.py's, shared with `--hf`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tinygen.cli.common import comma_list, non_negative_int, positive_int, unit_interval
from tinygen.diffusion.sampling import SamplerConfig

RUN_GUIDANCE = 3.0  # our runs' default CFG scale (--hf keeps Stable Diffusion's 7.5)


def register(commands) -> None:
    evaluate = commands.eval.add_parser(
        "img2img",
        help="img2img's trade-off: follow the prompt or keep the picture, per strength",
        description="Recolour or reshape --n real shapes test images by a prompt that changes "
        "one attribute, at each --strengths value, and judge with the shapes evaluator: the "
        "fraction showing the new attribute and the fraction keeping what the prompt did not "
        "change (the other of colour/shape, position, size), with standard errors. Writes "
        "eval.json, eval.md, img2img_tradeoff.png and examples.png.",
    )
    evaluate.add_argument("--run", type=Path, required=True, help="latent-diffusion, GLIDE or "
                          "class-conditional diffusion run")  # fmt: skip
    evaluate.add_argument(
        "--strengths",
        type=comma_list(unit_interval),
        default=[0.2, 0.4, 0.6, 0.8, 1.0],
        help="strengths in [0, 1], comma separated (default 0.2,0.4,0.6,0.8,1.0)",
    )
    evaluate.add_argument("--n", type=positive_int, default=256, help="images (default 256)")
    evaluate.add_argument("--guidance", type=float, default=RUN_GUIDANCE, help="CFG scale (3)")
    evaluate.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (50)")
    evaluate.add_argument("--seed", type=non_negative_int, default=0, help="seed (0)")
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="batch (64)")
    evaluate.add_argument("--checkpoint", choices=("ema", "best", "last"), default="ema",
                          help="weights to load (default ema)")  # fmt: skip
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda")
    evaluate.add_argument(
        "--out", type=Path, default=None, help="report directory (default RUN/eval-img2img)"
    )
    evaluate.set_defaults(func=eval_img2img)


def _load(run: Path, checkpoint: str, device_name: str):
    from tinygen.recipes.img2img import load_img2img
    from tinygen.train.device import resolve_device

    device = resolve_device(device_name)
    return load_img2img(run, which=checkpoint, device=device)


def run_img2img_run(args: argparse.Namespace) -> int:
    """`tinygen img2img --run DIR`: write the redrawn image to --out (the input resized to
    the model's size, with a warning, when it has another size)."""
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.img2img import load_image_for

    out = check_output_file(args.out, "--out", (".png",))
    model = _load(args.run, "ema", args.device)
    model.check_prompts([args.prompt])
    image = load_image_for(model, args.image)
    guidance = RUN_GUIDANCE if args.guidance is None else args.guidance
    result = model.img2img(
        image, [args.prompt], strength=args.strength, guidance=guidance,
        sampler=SamplerConfig(steps=args.steps), generator=torch.Generator().manual_seed(args.seed),
        progress=not args.no_progress,
    ).cpu()  # fmt: skip
    save_image_grid(result, out, padding=0)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def eval_img2img(args: argparse.Namespace) -> int:
    from tinygen.eval.img2img_eval import evaluate_img2img, write_img2img_report
    from tinygen.io import check_writable_dir, next_free_dir

    wanted = args.out or args.run / "eval-img2img"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "eval.json")
    if out != wanted:
        print(f"{wanted} holds an earlier evaluation; this one goes to {out}", file=sys.stderr)
    model = _load(args.run, args.checkpoint, args.device)
    rows, grid = evaluate_img2img(
        model, args.strengths, n=args.n, guidance=args.guidance,
        sampler=SamplerConfig(steps=args.steps), batch_size=args.batch_size, seed=args.seed,
        log=lambda line: print(line, file=sys.stderr),
    )  # fmt: skip
    paths = write_img2img_report(rows, grid, out, title=f"{args.run}: img2img, DDIM-{args.steps}")
    print(paths["table"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
