"""Drawing from a trained diffusion run: labels from prompts, an init image for SDEdit, the
sample grid with its denoising strip, and the evaluation sweep -- the library half of
`tinygen sample diffusion` and `tinygen eval diffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.diffusion.sampling import SamplerConfig, img2img_timesteps
from tinygen.errors import TinygenError
from tinygen.eval.diffusion_eval import Setting
from tinygen.models.diffusion import DiffusionModel
from tinygen.models.runs import load_model


def load_diffusion_run(
    run: str | Path,
    *,
    which: str = "ema",
    device: str | torch.device = "cpu",
    classifier: str | Path | None = None,
) -> tuple[DiffusionModel, nn.Module | None]:
    """A diffusion run (EMA weights by default) and, optionally, a noisy-classifier run."""
    model, _ = load_model(run, which=which, device=device, expect="diffusion")
    guide = None
    if classifier is not None:
        guide, _ = load_model(classifier, which="last", device=device, expect="noisy-classifier")
    return model, guide


def parse_labels(text: str | None, n: int) -> Tensor:
    """`--label "red circle,blue star"` -> (n,) class indices, cycling through the given
    labels (or, without --label, through the classes of the training split)."""
    from tinygen.data.shapes import allowed_combos, labels_for_prompts

    if text is None:
        pool = allowed_combos("train")
    else:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise TinygenError(
                f"--label {text!r} names no class; give a colour and a shape, e.g. 'red circle'"
            )
        pool = labels_for_prompts(parts).tolist()
    return torch.tensor([pool[i % len(pool)] for i in range(n)])


def untrained_labels_warning(model: DiffusionModel, labels: Tensor | None) -> str | None:
    """A warning when a model with one embedding row per class (`--label-embedding joint`)
    is asked for the held-out (colour, shape) pairs, whose rows training never touched
    (a factored model composes them from the colour's and the shape's embeddings)."""
    from tinygen.data.shapes import HELDOUT_COMBOS, combo_index, combo_name

    if labels is None or not model.config.class_conditional or model.config.label_factors:
        return None
    heldout = {combo_index(c, s) for c, s in HELDOUT_COMBOS}
    asked = sorted(heldout & set(labels.tolist()))
    if not asked:
        return None
    names = ", ".join(combo_name(i) for i in asked)
    return (
        f"warning: {names} never appeared in training, and this model has one embedding per "
        "(colour, shape) pair (--label-embedding joint): those rows are untrained. A model "
        "trained with the default --label-embedding factored composes such pairs."
    )


def load_init_image(path: str | Path, model: DiffusionModel, n: int) -> Tensor:
    """The image SDEdit starts from, as (n, C, H, W) in [-1, 1] at the model's size: any
    RGB/RGBA/greyscale picture Pillow reads, shorter side resized, centre-cropped."""
    from tinygen.data.image_folder import load_image

    path = Path(path)
    if not path.is_file():
        raise TinygenError(f"--init-image {path} does not exist; pass a PNG or JPEG file")
    channels, size, _ = model.image_shape
    if channels != 3:
        raise TinygenError(f"this model draws {channels}-channel images; --init-image needs RGB")
    image = load_image(path, size)  # (3, S, S)
    return image.unsqueeze(0).expand(n, -1, -1, -1).clone()


@dataclass
class Samples:
    images: Tensor  # (n, C, H, W) in [-1, 1]
    strip: Tensor  # (2 * k, C, H, W): k x_t frames, then the k predicted x_0 below them


def sample_with_strip(
    model: DiffusionModel,
    n: int,
    *,
    sampler: SamplerConfig,
    labels: Tensor | None = None,
    guidance: float = 1.0,
    classifier: nn.Module | None = None,
    classifier_scale: float = 0.0,
    init_image: Tensor | None = None,
    strength: float = 1.0,
    seed: int = 0,
    frames: int = 10,
    progress: bool = True,
) -> Samples:
    """n samples and a denoising strip of the first one (x_t and the predicted x_0 at about
    `frames` steps of the chain)."""
    device = next(model.parameters()).device
    run_steps = sampler.steps
    if init_image is not None:
        run_steps = len(img2img_timesteps(range(sampler.steps), strength)[0])
    every = max(1, run_steps // frames)
    strip: list[Tensor] = []

    def record(index: int, t: int, x_t: Tensor, pred_x0: Tensor) -> None:
        if index % every == 0 or index == run_steps - 1:
            strip.append(torch.stack([x_t[0].clamp(-1, 1), pred_x0[0].clamp(-1, 1)]).cpu())

    generator = torch.Generator(device=device).manual_seed(seed)
    images = model.generate(
        n,
        labels=labels,
        guidance=guidance,
        sampler=sampler,
        generator=generator,
        classifier=classifier,
        classifier_scale=classifier_scale,
        x_start=init_image.to(device) if init_image is not None else None,
        strength=strength,
        callback=record,
        progress=progress,
    )
    if not strip:  # strength 0: nothing ran; the strip is the image itself
        strip.append(torch.stack([images[0], images[0]]).cpu())
    pictures = torch.cat([torch.stack([s[0] for s in strip]), torch.stack([s[1] for s in strip])])
    return Samples(images.cpu(), pictures)


def sweep_settings(
    *,
    num_train_timesteps: int,
    class_conditional: bool,
    guidance: list[float],
    steps: list[int],
    classifier_scales: list[float] | None = None,
    **sampler_options: object,
) -> list[Setting]:
    """The settings `tinygen eval diffusion` measures: every guidance x steps combination
    (steps equal to the training steps use DDPM, fewer DDIM), or with a classifier every
    classifier scale at the first guidance; an unconditional model has one guidance (1)."""
    settings = []
    for count in steps:
        sampler = "ddpm" if count == num_train_timesteps else "ddim"

        def make(g: float, scale: float, sampler: str = sampler, count: int = count) -> Setting:
            return Setting(
                guidance=g,
                sampler=sampler,
                steps=count,
                classifier_scale=scale,
                **sampler_options,
            )

        if classifier_scales is not None:
            g = guidance[0] if class_conditional else 1.0
            settings += [make(g, scale) for scale in classifier_scales]
        elif class_conditional:
            settings += [make(g, 0.0) for g in guidance]
        else:
            settings.append(make(1.0, 0.0))
    return settings
