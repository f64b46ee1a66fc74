"""Loading any prompt-conditioned run for image-to-image (`tinygen img2img --run`, `tinygen
eval img2img`): latent diffusion, GLIDE, or the shapes world's class-conditional pixel
diffusion. The image files come in through `load_image_for` (resized, with a warning)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from tinygen.errors import TinygenError
from tinygen.models.img2img import Img2Img, PixelImg2Img
from tinygen.models.runs import load_model, load_run_config

IMG2IMG_TYPES = ("latent-diffusion", "glide", "diffusion")


def load_img2img(run: str | Path, *, which: str = "ema", device: str | torch.device = "cpu"):
    """The `Img2Img` of a run directory (EMA weights by default)."""
    run = Path(run)
    kind = load_run_config(run).get("model_type")
    if kind == "latent-diffusion":
        from tinygen.recipes.text2image import load_text2image

        return load_text2image(run, which=which, device=device)
    if kind == "glide":
        from tinygen.recipes.text2image import load_text2image

        return PixelImg2Img.glide(load_text2image(run, which=which, device=device))
    if kind == "diffusion":
        model, _ = load_model(run, which=which, device=device, expect="diffusion")
        return PixelImg2Img.shapes_classes(model)
    raise TinygenError(
        f"{run} holds a {kind!r} run; img2img works on {', '.join(IMG2IMG_TYPES)} runs "
        "(train one with `tinygen train latent-diffusion`, `train glide` or `train diffusion "
        "--cond class`)"
    )


def load_image_for(model: Img2Img, path: str | Path) -> Tensor:
    """An RGB image file as (1, 3, S, S) in [-1, 1] at the model's size S. Another size is
    *resized* (bicubic, with a warning; a non-square picture is squashed): SDEdit redraws
    the whole picture anyway, unlike inpainting, which refuses other sizes."""
    from PIL import Image

    from tinygen.data.image_folder import open_rgb

    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"--image {path} does not exist; pass a PNG or JPEG file")
    image = open_rgb(path)
    size = model.image_size
    if image.size != (size, size):
        warnings.warn(
            f"--image {path} is {image.size[0]}x{image.size[1]}; resized to {size}x{size}, "
            "the size this model draws",
            stacklevel=2,
        )
        image = image.resize((size, size), Image.BICUBIC)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return (data.view(size, size, 3).permute(2, 0, 1).float() / 127.5 - 1).unsqueeze(0)
