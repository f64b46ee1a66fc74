"""A noised CLIP: CLIP trained on noisy images x_t, the judge behind CLIP guidance.

GLIDE (Nichol et al. 2021, sec. 2.4) guides a diffusion model with the gradient of
f(x_t, t) . g(c), CLIP's image-text score. A CLIP trained on clean images misjudges the
noisy x_t the sampler passes through, so GLIDE trains its CLIP on x_t itself: the image
tower reads the diffusion step t (our ViT's `num_timesteps`), each image is noised to a
uniform t under the *diffusion model's* schedule, and the contrastive loss is the usual one.
The schedule is recorded in the run (`noise` in config.json), so a guided model can be
checked against it.

The figure that says whether the comparison with classifier-free guidance means anything:
zero-shot accuracy over the 48 (colour, shape) pairs at t = 0, T/4, T/2 and 3T/4.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.diffusion.objective import draw_timesteps_and_noise
from tinygen.diffusion.schedule import NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.eval.zero_shot import zero_shot_classifier, zero_shot_predict
from tinygen.models.clip import CLIPConfig
from tinygen.models.clip_loss import clip_loss
from tinygen.recipes.clip import CLIPTask, shapes_zero_shot_templates, train_clip

NOISE_KEY = "noise"  # config.json: {"beta_schedule": ..., "num_train_timesteps": ...}


class NoisedCLIPTask(CLIPTask):
    """CLIP's task on x_t: every image noised to its own uniform t (drawn with the batch
    generator, so evaluation batches repeat exactly)."""

    def __init__(self, *args, schedule: NoiseSchedule, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = schedule

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> tuple:
        images, tokens = super().get_batch(split, batch_size, generator)
        t, noise = draw_timesteps_and_noise(
            images.shape, self.schedule.num_train_timesteps, generator
        )
        return images, tokens, t, noise

    def loss(self, model: nn.Module, batch: tuple) -> Tensor:
        images, tokens, t, noise = batch
        x_t = self.schedule.add_noise(images, noise, t)
        image_features, text_features, logit_scale = model(x_t, tokens, t)
        return clip_loss(image_features, text_features, logit_scale)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        row = {"logit_scale": model.logit_scale.exp().item()}
        row.update(noised_zero_shot(model, self.tokenizer, self.schedule))
        return row


@torch.no_grad()
def noised_zero_shot(
    model: nn.Module,
    tokenizer,
    schedule: NoiseSchedule,
    *,
    n: int = 960,
    seed: int = 0,
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
) -> dict[str, float]:
    """Zero-shot (colour, shape) accuracy among the 48 pairs on `n` test images noised to
    t = fraction * T ("zero_shot_t250": at t = 250 of 1000), with fixed noise."""
    from tinygen.data.shapes import COLORS, SHAPES, combo_labels, generate_shapes

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    classnames = [f"{c} {s}" for c in COLORS for s in SHAPES]
    classifier = zero_shot_classifier(
        model, classnames, shapes_zero_shot_templates(), tokenizer=tokenizer
    ).to(device)
    size = model.config.image_size
    test = generate_shapes(n, split="test", seed=seed, image_size=size)
    target = combo_labels(test.labels["color"], test.labels["shape"])
    noise = torch.randn(test.images.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    for fraction in fractions:
        t_value = int(fraction * schedule.num_train_timesteps)
        predictions = []
        for x0, eps in zip(test.images.split(256), noise.split(256)):
            t = torch.full((len(x0),), t_value, dtype=torch.long)
            x_t = schedule.add_noise(x0, eps, t).to(device)
            features = model.encode_image(x_t, t.to(device))
            predictions.append(zero_shot_predict(features, classifier).cpu())
        out[f"zero_shot_t{t_value}"] = (torch.cat(predictions) == target).float().mean().item()
    model.train(was_training)
    return out


def noised_config(model_config: CLIPConfig, num_train_timesteps: int) -> CLIPConfig:
    """The CLIP config with the ViT's timestep input (`num_timesteps`)."""
    if model_config.image_tower != "vit":
        raise TinygenError("a noised CLIP needs the ViT image tower (--image-tower vit)")
    return dataclasses.replace(model_config, num_timesteps=num_train_timesteps)


# what may differ between a clean CLIP and the noised CLIP fine-tuned from it
_INIT_FREE_FIELDS = ("num_timesteps", "vocab_size", "context_length")
# a stem may be added to a stemless CLIP (its columns start at zero); one it has is kept
_STEM_FIELDS = ("vision_stem_channels", "vision_stem_kernel")
_PATCH = "visual.patch_embed.proj.weight"


def _clean_tower_weights(source: dict, target: dict) -> dict:
    """The clean CLIP's weights in the noised CLIP's layout: with a conv stem the patch
    embedding also reads the stem's channels, and its columns for them start at zero, so
    the stem adds nothing at step 0 but still receives a gradient."""
    weights = dict(source)
    clean, wanted = weights.get(_PATCH), target.get(_PATCH)
    if clean is not None and wanted is not None and clean.shape != wanted.shape:
        patch = torch.zeros_like(wanted)  # warm_start has checked that only the stem differs
        patch[:, : clean.shape[1]] = clean
        weights[_PATCH] = patch
    return weights


def warm_start(clip_run: str | Path, model_config: CLIPConfig):
    """init() for `train_clip`: start a noised CLIP from the trained CLIP in `clip_run`.

    The noised tower's parameters are the clean tower's plus `time_embedding.*` (see
    `models/clip.py: VisionTransformer`) and, with a conv stem, `stem.*` and the patch
    embedding's columns for the stem's channels; the timestep layer and those columns start
    at zero, so at step 0 the noised CLIP *is* the clean one at every t, and fine-tuning on
    x_t only has to learn what noise changes. Trained from scratch on x_t, our CLIP learns
    colour first and shape only after thousands of steps (docs/benchmarks.md, section
    glide); the clean CLIP already tells the 48 pairs apart. The vocabulary is the clean
    run's (the text tower's embedding rows).
    """
    from tinygen.data.caption_tokenizer import load_caption_tokenizer
    from tinygen.models.runs import load_model

    source, config = load_model(clip_run, expect="clip")
    source_config = CLIPConfig(**config["model"])
    free = _INIT_FREE_FIELDS + (_STEM_FIELDS if not source_config.vision_stem_channels else ())
    differ = [
        f"{name}: {getattr(source_config, name)!r} there, {getattr(model_config, name)!r} here"
        for name in (f.name for f in dataclasses.fields(CLIPConfig))
        if name not in free and getattr(source_config, name) != getattr(model_config, name)
    ]
    if differ:
        raise TinygenError(
            f"--init-from {clip_run}: its model differs from the one asked for ("
            + "; ".join(differ)
            + "); drop the model flags, or give the values of that run"
        )
    tokenizer = load_caption_tokenizer(clip_run)

    def load(model: nn.Module) -> None:
        weights = _clean_tower_weights(source.state_dict(), model.state_dict())
        missing, unexpected = model.load_state_dict(weights, strict=False)
        new = (".time_embedding.", ".stem.")
        foreign = [k for k in missing if not any(part in f".{k}" for part in new)]
        if foreign or unexpected:
            raise TinygenError(
                f"--init-from {clip_run}: weights do not fit (missing {foreign[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in missing and ".time_embedding." in f".{name}":
                    param.zero_()  # the stem keeps its random init: its features are needed

    return tokenizer, load


def train_noised_clip(
    model_config: CLIPConfig,
    train_config,
    out: str | Path,
    *,
    beta_schedule: str = "cosine",
    num_train_timesteps: int = 1000,
    init_from: str | Path | None = None,
    **options,
):
    """Train a noised CLIP into `out` (options as `recipes.clip.train_clip`'s): the ViT reads
    t, every image is noised under `beta_schedule`, and the schedule is recorded in the run.
    init_from: a clean CLIP run to fine-tune from (`warm_start`) instead of random weights."""
    schedule = NoiseSchedule(beta_schedule, num_train_timesteps)

    def make_task(model, tokenizer, train, val) -> NoisedCLIPTask:
        return NoisedCLIPTask(model, tokenizer, train, val, schedule=schedule)

    noise = {"beta_schedule": beta_schedule, "num_train_timesteps": num_train_timesteps}
    extras = {NOISE_KEY: noise}
    config = noised_config(model_config, num_train_timesteps)
    init = None
    if init_from is not None:
        from tinygen.models.unclip import clip_fingerprint

        init = functools.partial(warm_start, init_from, config)
        extras["init_from"] = {"run": str(init_from), "weights": clip_fingerprint(init_from)}
    return train_clip(
        config,
        train_config,
        out,
        make_task=make_task,
        run_extras=extras,
        init=init,
        **options,
    )


def noise_of_run(config: dict, run: str | Path) -> dict:
    """The noise schedule a noised CLIP run was trained on (`noise` in its config.json)."""
    noise = config.get(NOISE_KEY)
    if not noise:
        raise TinygenError(
            f"{run} is a CLIP trained on clean images; CLIP guidance needs a noised CLIP "
            "(tinygen train clip --noised --schedule <the diffusion model's schedule>)"
        )
    return noise
