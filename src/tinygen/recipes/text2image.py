"""The library half of `tinygen generate`, `tinygen eval text2image` and `tinygen inpaint`:
load any text-to-image run as a pipeline, a noised CLIP as a guide, prompts from flags or
a file, and the captioned grid.

A run names its kind in config.json (`model_type`); each text-to-image kind maps to a
loader here, so later kinds (unCLIP, latent diffusion) join by adding one entry.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tinygen.data.tokenizer import load_tokenizer
from tinygen.errors import TinygenError
from tinygen.models.runs import load_model, load_run_config
from tinygen.models.text2image import ClipGuide, GlidePipeline

TEXT2IMAGE_TYPES = ("glide", "latent-diffusion", "unclip-decoder", "unclip-prior")


def load_text2image(run: str | Path, *, which: str = "ema", device: str = "cpu"):
    """The pipeline of a text-to-image run directory (EMA weights by default)."""
    run = Path(run)
    config = load_run_config(run)
    kind = config.get("model_type")
    if kind not in TEXT2IMAGE_TYPES:
        raise TinygenError(
            f"{run} holds a {kind!r} run, not a text-to-image one ({', '.join(TEXT2IMAGE_TYPES)}); "
            "train one with `tinygen train glide` or `tinygen train latent-diffusion`"
        )
    if kind == "latent-diffusion":
        from tinygen.models.latent_pipeline import LatentDiffusionPipeline
        from tinygen.recipes.latent_diffusion import load_latent_diffusion

        ldm, tokenizer, _ = load_latent_diffusion(run, which=which, device=device)
        return LatentDiffusionPipeline(ldm, tokenizer)
    if kind.startswith("unclip"):  # a decoder run names its CLIP and prior (components.json)
        from tinygen.recipes.unclip import load_unclip

        return load_unclip(run, which=which, device=device)
    model, _ = load_model(run, which=which, device=device, expect=kind)
    return GlidePipeline(model, load_tokenizer(run))


def load_clip_guide(run: str | Path, *, device: str = "cpu") -> ClipGuide:
    """A noised CLIP run as a guide (its weights, tokenizer and noise schedule)."""
    from tinygen.recipes.clip import load_clip
    from tinygen.recipes.clip_noised import noise_of_run

    clip, tokenizer, config = load_clip(run)
    return ClipGuide(clip.to(device), tokenizer, noise_of_run(config, run))


def read_prompts(prompts: list[str] | None, prompts_file: Path | None) -> list[str]:
    """--prompt values, then the lines of --prompts-file (blank lines and # comments skipped)."""
    out = list(prompts or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise TinygenError(f"--prompts-file {prompts_file} does not exist; one prompt per line")
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
        out += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not out:
        raise TinygenError("give at least one --prompt (or a --prompts-file)")
    return out


def captioned_grid(
    images: Tensor, prompts: list[str], n_per_prompt: int, path: Path, *, scale: int = 4
) -> Path:
    """One row per prompt (n_per_prompt images), the prompt written under its row."""
    from PIL import Image, ImageDraw

    from tinygen.io import atomic_write

    n, _, h, w = images.shape
    pad, text_h = 2, 14
    cell_w, cell_h = w * scale + pad, h * scale + pad
    text_w = 7 * max(len(p) for p in prompts)  # the default bitmap font: ~6-7 px a character
    width = max(n_per_prompt * cell_w + pad, text_w + 2 * pad)
    canvas = Image.new("RGB", (width, len(prompts) * (cell_h + text_h) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for i in range(n):
        row, col = divmod(i, n_per_prompt)
        tile = Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).resize(
            (w * scale, h * scale), Image.NEAREST
        )
        canvas.paste(tile, (pad + col * cell_w, pad + row * (cell_h + text_h)))
    for row, prompt in enumerate(prompts):
        draw.text((pad, (row + 1) * (cell_h + text_h) - text_h), prompt, fill=(0, 0, 0))
    path = Path(path)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path


def load_exact_image(path: Path, size: int, flag: str = "--image") -> Tensor:
    """An RGB image file (1, 3, size, size) in [-1, 1]; another size is refused (inpainting
    keeps the pixels outside the mask exactly, so it never resizes them)."""
    from tinygen.data.image_folder import open_rgb

    if not Path(path).is_file():
        raise TinygenError(f"{flag} {path} does not exist; pass a PNG or JPEG file")
    image = open_rgb(path)
    if image.size != (size, size):
        raise TinygenError(
            f"{flag} {path} is {image.size[0]}x{image.size[1]} but this model paints "
            f"{size}x{size} images; resize it to {size}x{size} first (it is not resized "
            "here, so the kept pixels stay exactly yours)"
        )
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return (data.view(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1).unsqueeze(0)


def load_mask(path: Path, size: int) -> Tensor:
    """A black-and-white mask file (1, 1, size, size): white (255) = repaint, black = keep."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise TinygenError(f"--mask {path} does not exist; pass a black-and-white PNG")
    try:
        with Image.open(path) as im:
            grey = im.convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise TinygenError(f"--mask {path} is not an image Pillow can read") from e
    if grey.size != (size, size):
        raise TinygenError(
            f"--mask {path} is {grey.size[0]}x{grey.size[1]}; it must match the image, "
            f"{size}x{size}"
        )
    values = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(size, size)
    if not bool(((values == 0) | (values == 255)).all()):
        raise TinygenError(
            f"--mask {path} has grey pixels; use pure black (keep) and white (repaint) only"
        )
    mask = (values == 255).float().view(1, 1, size, size)
    if not mask.any():
        raise TinygenError(f"--mask {path} is all black: mark the region to repaint in white")
    return mask
