"""`tinygen generate`, `tinygen eval text2image` and `tinygen inpaint`: one entry point for
every text-to-image run (GLIDE now; unCLIP and latent diffusion plug into the same loader,
`tinygen.recipes.text2image.load_text2image`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tinygen.cli.common import comma_list, non_negative_int, positive_int
from tinygen.diffusion.sampling import SAMPLERS, SamplerConfig
from tinygen.errors import TinygenError

FLOAT_LIST = comma_list(float)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="text-to-image run directory")
    parser.add_argument(
        "--checkpoint",
        choices=("ema", "best", "last"),
        default="ema",
        help="weights to load (default ema; falls back to last without EMA)",
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default ddim")
    parser.add_argument("--steps", type=positive_int, default=50, help="sampling steps (50)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise per step (0)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def register(commands) -> None:
    gen = commands.root.add_parser(
        "generate",
        help="draw images from prompts with a text-to-image run",
        description="Draw --n images per prompt with classifier-free guidance (and optionally "
        "a noised CLIP's guidance); writes a grid with the prompts under the rows and a "
        "denoising strip of the first image.",
    )
    _add_common(gen)
    gen.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    gen.add_argument("--prompts-file", type=Path, default=None, help="one prompt per line")
    gen.add_argument("--n", type=positive_int, default=8, help="images per prompt (default 8)")
    gen.add_argument(
        "--guidance",
        type=float,
        default=3.0,
        help="classifier-free guidance scale: 0 unconditional, 1 conditional, >1 sharper (3)",
    )
    gen.add_argument("--clip", type=Path, default=None, help="noised CLIP run to guide with")
    gen.add_argument("--clip-scale", type=float, default=0.0, help="CLIP-guidance scale (0)")
    gen.add_argument("--out", type=Path, default=Path("grid.png"), help="grid picture (PNG)")
    gen.set_defaults(func=generate)

    evaluate = commands.eval.add_parser(
        "text2image",
        help="prompt fidelity, diversity and guidance sweeps of a text-to-image run",
        description="Score a text-to-image run with the shapes evaluator over a sweep of "
        "classifier-free guidance scales (and CLIP-guidance scales with --clip): fidelity with "
        "standard errors, feature distance, exact diversity on what prompts leave open. "
        "Writes eval.json, eval.md and fidelity_diversity.png.",
    )
    _add_common(evaluate)
    evaluate.add_argument(
        "--prompts",
        choices=("single", "pairs", "heldout", "partial"),
        default="single",
        help="prompt set (default single)",
    )
    evaluate.add_argument("--n", type=positive_int, default=256, help="images per setting (256)")
    evaluate.add_argument(
        "--guidance",
        type=FLOAT_LIST,
        default=[0, 1, 2, 3, 5],
        help="CFG scales, comma separated (default 0,1,2,3,5)",
    )
    evaluate.add_argument("--clip", type=Path, default=None, help="noised CLIP run")
    evaluate.add_argument(
        "--clip-scales",
        type=FLOAT_LIST,
        default=None,
        help="CLIP-guidance scales, e.g. 1,2,4,8 (needs --clip)",
    )
    evaluate.add_argument(
        "--clip-guidance",
        type=float,
        default=1.0,
        help="the CFG scale under CLIP guidance: 1 = the text-conditional model, as GLIDE; "
        "0 = the unconditional (empty-caption) model",
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=64, help="sampling batch")
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report directory (default RUN/eval-text2image-PROMPTS)",
    )
    evaluate.set_defaults(func=eval_text2image)

    inpaint = commands.root.add_parser(
        "inpaint",
        help="repaint the white region of a mask following a prompt",
        description="Repaint where --mask is white (keep where black) following --prompt; "
        "outside the mask the output equals the input exactly. Writes input | mask | output.",
    )
    _add_common(inpaint)
    inpaint.add_argument("--image", type=Path, required=True, help="the picture to edit")
    inpaint.add_argument("--mask", type=Path, required=True, help="white = repaint, black = keep")
    inpaint.add_argument("--prompt", required=True, help="what to paint in the mask")
    inpaint.add_argument("--n", type=positive_int, default=4, help="results (default 4)")
    inpaint.add_argument("--guidance", type=float, default=3.0, help="CFG scale (3)")
    inpaint.add_argument("--out", type=Path, default=Path("inpaint.png"), help="output PNG")
    inpaint.set_defaults(func=run_inpaint)

    ev_inpaint = commands.eval.add_parser(
        "inpainting",
        help="replace one object by another at the same place: how often it works",
        description="Box-mask the object of --n test images, prompt another colour and shape "
        "at its size and place, and judge the results; also the largest change outside the "
        "masks (0 when the known region is kept exactly). Writes eval.json.",
    )
    _add_common(ev_inpaint)
    ev_inpaint.add_argument("--n", type=positive_int, default=256, help="images (default 256)")
    ev_inpaint.add_argument("--guidance", type=float, default=3.0, help="CFG scale (3)")
    ev_inpaint.add_argument(
        "--out", type=Path, default=None, help="report directory (default RUN/eval-inpainting)"
    )
    ev_inpaint.set_defaults(func=eval_inpainting)


def _load(args: argparse.Namespace):
    from tinygen.recipes.text2image import load_text2image
    from tinygen.train.device import resolve_device

    device = resolve_device(args.device)
    return load_text2image(args.run, which=args.checkpoint, device=device), device


def _sampler(args: argparse.Namespace) -> SamplerConfig:
    return SamplerConfig(sampler=args.sampler, steps=args.steps, eta=args.eta)


def generate(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.text2image import captioned_grid, load_clip_guide, read_prompts

    prompts = read_prompts(args.prompt, args.prompts_file)
    out = check_output_file(args.out, "--out", (".png",))
    if args.clip_scale and args.clip is None:
        raise TinygenError("--clip-scale needs --clip (a noised CLIP run)")
    pipeline, device = _load(args)
    pipeline.check_prompts(prompts)  # before loading the guide or sampling anything
    clip = load_clip_guide(args.clip, device=device) if args.clip else None
    every = max(1, args.steps // 10)
    strip: list[torch.Tensor] = []

    def record(index: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if index % every == 0 or index == args.steps - 1:
            strip.append(torch.stack([x_t[0].clamp(-1, 1), pred_x0[0].clamp(-1, 1)]).cpu())

    wanted = [p for p in prompts for _ in range(args.n)]
    generator = torch.Generator().manual_seed(args.seed)
    images = pipeline.generate(
        wanted,
        guidance=args.guidance,
        sampler=_sampler(args),
        generator=generator,
        clip=clip,
        clip_scale=args.clip_scale,
        callback=record,
        progress=True,
    )
    captioned_grid(images, prompts, args.n, out)
    strip_path = out.with_name(out.stem + "_strip.png")
    frames = torch.cat([torch.stack([s[0] for s in strip]), torch.stack([s[1] for s in strip])])
    save_image_grid(frames, strip_path, nrow=len(strip), scale=4)
    print(
        f"wrote {out} ({len(wanted)} images) and {strip_path} (top: x_t, bottom: predicted x_0)",
        file=sys.stderr,
    )
    return 0


def eval_text2image(args: argparse.Namespace) -> int:
    from tinygen.eval.text2image_eval import Text2ImageSetting, evaluate_text2image
    from tinygen.eval.text2image_report import write_report
    from tinygen.io import check_writable_dir, next_free_dir
    from tinygen.recipes.text2image import load_clip_guide

    if args.clip_scales and args.clip is None:
        raise TinygenError("--clip-scales needs --clip (a noised CLIP run)")
    wanted = args.out or args.run / f"eval-text2image-{args.prompts}"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "eval.json")
    if out != wanted:
        print(f"{wanted} holds an earlier evaluation; this one goes to {out}", file=sys.stderr)
    pipeline, device = _load(args)
    clip = load_clip_guide(args.clip, device=device) if args.clip else None
    base = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta}
    settings = [Text2ImageSetting(guidance=g, **base) for g in args.guidance]
    settings += [
        Text2ImageSetting(guidance=args.clip_guidance, clip_scale=s, **base)
        for s in args.clip_scales or []
        if s
    ]
    rows = evaluate_text2image(
        pipeline,
        settings,
        prompts_name=args.prompts,
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
        clip=clip,
        log=lambda line: print(line, file=sys.stderr),
    )
    paths = write_report(rows, out, title=f"{args.run} ({args.prompts} prompts)")
    print(paths["table"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def run_inpaint(args: argparse.Namespace) -> int:
    from tinygen.data.image_folder import save_image_grid
    from tinygen.io import check_output_file
    from tinygen.recipes.text2image import load_exact_image, load_mask

    out = check_output_file(args.out, "--out", (".png",))
    pipeline, device = _load(args)
    pipeline.check_prompts([args.prompt])
    size = pipeline.image_size
    image = load_exact_image(args.image, size)
    mask = load_mask(args.mask, size)
    images, masks = image.expand(args.n, -1, -1, -1), mask.expand(args.n, -1, -1, -1)
    generator = torch.Generator().manual_seed(args.seed)
    result = pipeline.inpaint(
        images.to(device),
        masks.to(device),
        [args.prompt] * args.n,
        guidance=args.guidance,
        sampler=_sampler(args),
        generator=generator,
        progress=True,
    ).cpu()
    shown = torch.cat([image, mask.expand(1, 3, -1, -1) * 2 - 1, result])
    save_image_grid(shown, out, nrow=len(shown), scale=4)
    print(f"wrote {out}: input | mask | {args.n} results", file=sys.stderr)
    return 0


def eval_inpainting(args: argparse.Namespace) -> int:
    import json

    from tinygen.eval.inpainting_eval import evaluate_inpainting
    from tinygen.io import atomic_write, check_writable_dir, next_free_dir

    wanted = args.out or args.run / "eval-inpainting"
    out = next_free_dir(check_writable_dir(wanted, "--out"), "eval.json")
    pipeline, _ = _load(args)
    row = evaluate_inpainting(
        pipeline, n=args.n, guidance=args.guidance, sampler=_sampler(args), seed=args.seed
    )
    text = json.dumps(row, indent=2) + "\n"
    atomic_write(out / "eval.json", lambda tmp: Path(tmp).write_text(text))
    print(text, end="")
    print(f"wrote {out / 'eval.json'}", file=sys.stderr)
    return 0
