"""What users do with a trained first stage: `tinygen reconstruct` (input | reconstruction) and
`tinygen eval autoencoder` (the autoencoders table: PSNR, the judge's agreement, codebook use,
training time), on a run that `tinygen.recipes.autoencoder` trained."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tinygen import io
from tinygen.errors import TinygenError
from tinygen.models.autoencoder import Autoencoder
from tinygen.recipes.autoencoder import load_autoencoder


def read_image_for(model: Autoencoder, image_size: int, path: str | Path) -> Tensor:
    """A user's image (1, 3, S, S) in [-1, 1] for an autoencoder trained at S = image_size px:
    another size is refused (not resized -- a resize would blur what the reconstruction is
    compared with), a transparent image too (its colours under the alpha are undefined)."""
    from PIL import Image, UnidentifiedImageError

    from tinygen.recipes.text2image import load_exact_image

    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"--image {path} does not exist; pass a PNG or JPEG file")
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            transparent = mode in ("RGBA", "LA", "PA") and im.getchannel("A").getextrema()[0] < 255
    except (UnidentifiedImageError, OSError) as e:
        raise TinygenError(
            f"--image {path} is not an image Pillow can read; pass a PNG or JPEG"
        ) from e
    if size != (image_size, image_size):
        raise TinygenError(
            f"--image {path} is {size[0]}x{size[1]} but this autoencoder was trained on "
            f"{image_size}x{image_size} images; resize it to {image_size}x{image_size} first "
            "(reconstruct does not resize, so the input shown is exactly yours)"
        )
    if transparent:
        raise TinygenError(
            f"--image {path} has transparent pixels (mode {mode}); flatten it onto a "
            "background first (an RGB PNG or JPEG)"
        )
    return load_exact_image(path, image_size)


def run_image_size(config: dict) -> int:
    """The image side a run was trained on (its data config; 64 when it does not say)."""
    return int(config.get("data", {}).get("image_size", 64))


def reconstruct_file(run: str | Path, image: str | Path, out: str | Path) -> Path:
    """Write `out`: the input | its reconstruction, side by side (a PNG)."""
    from tinygen.data.image_folder import save_image_grid

    model, _ = load_autoencoder(run)
    size = run_image_size(io.read_json(Path(run) / io.CONFIG_FILE))
    x = read_image_for(model, size, image)
    with torch.no_grad():
        recon = model(x, sample_posterior=False)[0].clamp(-1, 1)
    return save_image_grid(torch.cat([x, recon]), out, nrow=2)


TABLE_HEADER = (
    "| run | kind | f | c | PSNR (dB) | judge agrees: all | colour | shape | size | position "
    "| accuracy (all) | feature distance | perplexity | dead codes | train time |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(r: dict) -> str:
    """One row of the autoencoders table (TABLE_HEADER) from `eval_run`'s result."""

    def pct(key: str) -> str:
        return f"{100 * r[key]:.1f} ± {100 * r[key + '_se']:.1f}"

    vq = r["kind"] == "vq"
    kind = f"{r['kind']} + GAN" if r.get("gan_weight") else r["kind"]
    codes = f"{r['perplexity']:.1f} / {r['codebook_size']}" if vq else "–"
    dead = str(r["dead_codes"]) if vq else "–"
    minutes = f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") else "?"
    return (
        f"| {r['run']} | {kind} | {r['factor']} | {r['latent_channels']} "
        f"| {r['psnr']:.2f} ± {r['psnr_se']:.2f} | {pct('agreement')} | {pct('agreement_color')} "
        f"| {pct('agreement_shape')} | {pct('agreement_size')} | {pct('agreement_position')} "
        f"| {pct('accuracy')} | {r['feature_distance']:.3g} | {codes} | {dead} | {minutes} |"
    )


def eval_run(run: str | Path, *, n: int = 1024, seed: int = 0, evaluator=None) -> dict:
    """`tinygen eval autoencoder` for one run: `evaluate_autoencoder` on the run's model and
    image size, plus what the run says of itself (kind, f, c, training time)."""
    from tinygen.eval.autoencoder_eval import evaluate_autoencoder

    model, scale = load_autoencoder(run)
    config = io.read_json(Path(run) / io.CONFIG_FILE)
    result = {
        "run": str(run),
        "kind": model.config.regularizer,
        "factor": model.downsample_factor,
        "latent_channels": model.latent_channels,
        "parameters": model.num_params(),
        "scale_factor": scale,
        "train_seconds": config.get("train_seconds"),
        "steps": config.get("train", {}).get("max_iters"),
        "gan_weight": config.get("loss", {}).get("gan_weight", 0.0),
    }
    size = run_image_size(config)
    result.update(evaluate_autoencoder(model, n=n, image_size=size, seed=seed, evaluator=evaluator))
    return result
