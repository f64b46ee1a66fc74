"""`tinygen txt2img` and `tinygen img2img`: Stable Diffusion v1.x checkpoints (`--hf`) in
tinygen's own U-Net, autoencoder, CLIP text tower and DDIM sampler.

`img2img` takes its model from a group of mutually exclusive sources: `--hf` (a diffusers
folder or Hub name) or `--run DIR` (our own pixel or latent runs; cli/img2img.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.cli.common import (
    non_empty_text,
    non_negative_float,
    non_negative_int,
    positive_int,
    unit_interval,
)
from tinygen.errors import TinygenError

HF_HELP = (
    "a Stable Diffusion v1.x pipeline: a local diffusers folder (unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/) or a Hugging Face Hub name (runwayml/stable-diffusion-v1-5; "
    "downloaded only then)"
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _common_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--prompt", required=True, type=non_empty_text, help="what to draw")
    parser.add_argument(
        "--negative-prompt", default="", help="what to steer away from (default: empty)"
    )
    parser.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    parser.add_argument(
        "--guidance",
        type=non_negative_float,
        default=7.5,
        help="classifier-free guidance scale, >= 0 (default 7.5; 1 = no guidance)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the noise (default 0)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help=f"PNG to write (default {default_out})"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="weights and activations: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, or "
        "fp16 (CUDA only)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu or cuda (default auto)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(commands) -> None:
    txt2img = commands.root.add_parser(
        "txt2img",
        help="draw an image from a prompt with a Stable Diffusion checkpoint",
        description="Text-to-image with a Stable Diffusion v1.x checkpoint, run in tinygen's "
        "own modules (U-Net, KL autoencoder, CLIP text tower, DDIM sampler).",
    )
    txt2img.add_argument("--hf", metavar="NAME_OR_DIR", required=True, help=HF_HELP)
    txt2img.add_argument(
        "--height", type=positive_int, default=None, help="pixels, a multiple of 64 (default 512)"
    )
    txt2img.add_argument(
        "--width", type=positive_int, default=None, help="pixels, a multiple of 64 (default 512)"
    )
    _common_flags(txt2img, "txt2img.png")
    txt2img.set_defaults(func=run_txt2img)

    img2img = commands.root.add_parser(
        "img2img",
        help="redraw an image toward a prompt (SDEdit) with a Stable Diffusion checkpoint",
        description="Image-to-image: encode --image, noise it part-way (--strength) and "
        "denoise toward --prompt, through the same sample loop as text-to-image. Sides that "
        "are not multiples of 64 are resized down to the nearest ones (with a warning).",
    )
    source = img2img.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", metavar="NAME_OR_DIR", help=HF_HELP)
    source.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        help="one of our runs: latent diffusion, GLIDE, or class-conditional diffusion on the "
        "shapes world (the prompt names its class); default guidance 3 for runs; an image of "
        "another size is resized, with a warning",
    )
    img2img.add_argument("--image", type=Path, required=True, help="the picture to start from")
    img2img.add_argument(
        "--strength",
        type=unit_interval,
        default=0.75,
        help="in [0, 1]: how far to noise the image (0 keeps it, 1 redraws; default 0.75)",
    )
    _common_flags(img2img, "img2img.png")
    img2img.set_defaults(func=run_img2img, guidance=None)  # --hf: 7.5, --run: 3


def _load(args: argparse.Namespace):
    """The pipeline on the chosen device, in the chosen precision."""
    import torch

    from tinygen.models.stable_diffusion import StableDiffusion
    from tinygen.train.device import resolve_device

    device = resolve_device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise TinygenError("--precision fp16 needs CUDA; on the CPU use fp32 or bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return StableDiffusion.from_pretrained(args.hf, device=device, dtype=dtype)


def _save(images, out: Path) -> int:
    from tinygen.data.image_folder import save_image_grid

    path = save_image_grid(images, out, padding=0)
    print(f"wrote {path}")
    return 0


def run_txt2img(args: argparse.Namespace) -> int:
    pipe = _load(args)
    images = pipe.txt2img(
        [args.prompt], steps=args.steps, guidance=args.guidance, seed=args.seed,
        height=args.height, width=args.width, negative_prompt=args.negative_prompt,
        progress=not args.no_progress,
    )  # fmt: skip
    return _save(images, args.out)


def run_img2img(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise TinygenError(f"--image {args.image} does not exist; pass a PNG or JPEG file")
    if args.run is not None:
        from tinygen.cli.img2img import run_img2img_run

        return run_img2img_run(args)
    pipe = _load(args)
    guidance = 7.5 if args.guidance is None else args.guidance
    images = pipe.img2img(
        args.image, [args.prompt], strength=args.strength, steps=args.steps,
        guidance=guidance, seed=args.seed, negative_prompt=args.negative_prompt,
        progress=not args.no_progress,
    )  # fmt: skip
    return _save(images, args.out)
