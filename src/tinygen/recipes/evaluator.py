"""The shapes evaluator's recipe: training augmentation, the Trainer task, per-attribute
accuracy (clean and under noise), the default preset and the run that installs it.

Since diffusion samples are rarely as clean as the generator's pictures, training adds
Gaussian noise of a random level and a slight blur, so small imperfections do not flip the
evaluator's verdict.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen import io
from tinygen.data.shapes import ATTRIBUTES, IGNORE, generate_shapes, slot_labels
from tinygen.eval.fidelity import prompt_fidelity
from tinygen.models.shapes_evaluator import EvaluatorConfig, ShapesEvaluator
from tinygen.recipes.common import Preset, fit, is_main_process
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

PRESETS: dict[str, Preset] = {
    # Sized for a 2-core CPU: width 16, batch 64 and 1,200 steps reach 100% on clean test
    # images (a width-16 run of 2,000 steps was at 100% by step 1,000; docs/benchmarks.md).
    "default": Preset(
        EvaluatorConfig(two_objects=True),
        TrainConfig(
            max_iters=2000,
            batch_size=64,
            learning_rate=2e-3,
            min_lr=1e-4,
            warmup_iters=100,
            weight_decay=0.05,
            eval_interval=200,
            eval_iters=8,
            log_interval=25,
        ),
        "100% on clean test images in minutes on a 2-core CPU",
    ),
}


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own Gaussian of std `sigma` (B,) pixels (5-tap separable,
    reflect padding); sigma 0 leaves an image unchanged."""
    b, c, h, w = images.shape
    taps = torch.arange(-2, 3, dtype=images.dtype, device=images.device)
    s = sigma.clamp(min=1e-3).view(b, 1)
    kernel = torch.exp(-0.5 * (taps / s) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (B, 5)
    kernel = kernel.repeat_interleave(c, 0)  # (B*C, 5): one kernel per channel
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, 5), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), kernel.view(b * c, 1, 5, 1), groups=b * c)
    return x.view(b, c, h, w)


def augment(
    images: Tensor,
    generator: torch.Generator,
    *,
    max_noise: float = 0.3,
    max_blur: float = 0.8,
    p_noise: float = 0.6,
    p_blur: float = 0.4,
) -> Tensor:
    """What a generator's samples look like: a slight blur (std up to `max_blur` pixels)
    with probability `p_blur`, then Gaussian noise of a random std up to `max_noise` with
    probability `p_noise`, clamped back to [-1, 1]."""
    b = images.shape[0]
    blur = torch.rand(b, generator=generator) * max_blur
    blur = torch.where(torch.rand(b, generator=generator) < p_blur, blur, torch.zeros(b))
    out = gaussian_blur(images, blur)
    noise = torch.rand(b, generator=generator) * max_noise
    noise = torch.where(torch.rand(b, generator=generator) < p_noise, noise, torch.zeros(b))
    eps = torch.randn(images.shape, generator=generator)
    return (out + noise.view(b, 1, 1, 1) * eps).clamp(-1, 1)


class EvaluatorTask:
    """Trainer task: fresh augmented shapes batches from the "evaluator" split (all 48
    colour-shape pairs, since the evaluator must judge held-out pairs too), with the loss
    the sum of the attributes' cross-entropies. Training seeds are even and validation
    seeds odd, so the two never share an image; accuracy is measured on the "test" split.
    """

    items_name = "images"

    def __init__(self, config: EvaluatorConfig, *, n_test: int = 1000) -> None:
        self.config = config
        self.model = ShapesEvaluator(config)
        self.n_test = n_test
        self._test = self._test_pairs = None

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        """A batch of one-object images -- half of it two-object images when the evaluator
        has slot heads; the one-object heads ignore the two-object images."""
        seed = int(torch.randint(2**58, (1,), generator=generator)) * 2 + (split != "train")
        size = self.config.image_size
        n_pairs = batch_size // 2 if self.config.two_objects else 0
        batch = generate_shapes(batch_size - n_pairs, split="evaluator", seed=seed, image_size=size)
        images, labels = batch.images, {k: batch.labels[k] for k in ATTRIBUTES}
        slots = slot_labels(batch.labels)
        if n_pairs:
            pairs = generate_shapes(
                n_pairs, split="evaluator", seed=seed, image_size=size, two_objects=True
            )
            images = torch.cat([images, pairs.images])
            labels = {k: torch.cat([v, torch.full((n_pairs,), IGNORE)]) for k, v in labels.items()}
            slots = {k: torch.cat([v, slot_labels(pairs.labels)[k]]) for k, v in slots.items()}
        images = augment(images, torch.Generator().manual_seed(seed))
        batch = {"images": images, **labels}
        if self.config.two_objects:
            batch.update({"slot_" + k: v for k, v in slots.items()})
        return batch

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        logits = model(batch["images"])
        loss = sum(F.cross_entropy(logits[k], batch[k], ignore_index=IGNORE) for k in ATTRIBUTES)
        for key in ("slot_occupied", "slot_color", "slot_shape", "slot_size"):
            if key in logits:
                flat = logits[key].flatten(0, 1)  # (B * 5 places, classes)
                loss = loss + F.cross_entropy(flat, batch[key].flatten(), ignore_index=IGNORE)
        return loss

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Per-attribute accuracy on clean "test" images (seed 0); with slot heads also the
        two-object judge's accuracy ("pair_all" ...) on two-object test images."""
        size = self.config.image_size
        if self._test is None:
            self._test = generate_shapes(self.n_test, split="test", seed=0, image_size=size)
            if self.config.two_objects:
                self._test_pairs = generate_shapes(
                    self.n_test, split="test", seed=0, image_size=size, two_objects=True
                )
        out = {
            f"acc_{k}": v
            for k, v in attribute_accuracy(model, self._test.images, self._test.labels).items()
        }
        if self.config.two_objects:
            out.update({f"pair_{k}": v for k, v in pair_accuracy(model, self._test_pairs).items()})
        return out


def attribute_accuracy(
    model: ShapesEvaluator, images: Tensor, labels: dict[str, Tensor]
) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the label, per attribute."""
    predicted = model.predict(images)
    return {k: (predicted[k] == labels[k]).float().mean().item() for k in ATTRIBUTES}


def pair_accuracy(model: ShapesEvaluator, batch) -> dict[str, float]:
    """The two-object judge on real two-object images, each judged against its own prompt:
    "all" is the fraction it reads entirely right (a perfect judge scores 1, and a
    binding_swap of 0)."""
    return prompt_fidelity(batch.images, batch.prompts, evaluator=model)


def accuracy_under_noise(
    model: ShapesEvaluator,
    *,
    n: int = 2000,
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2),
    split: str = "test",
    seed: int = 0,
    image_size: int | None = None,
) -> dict[float, dict[str, float]]:
    """Per-attribute accuracy on `n` images of `split` with Gaussian noise of std `sigma`
    (in [-1, 1] units) added and clamped, for each sigma: how the evaluator fares on the
    residual noise a diffusion sampler may leave. `image_size` (default: the evaluator's
    own) draws the world at another size -- 64 px for latent diffusion -- which the
    evaluator judges after an antialiased resize to its own size."""
    size = image_size or model.config.image_size
    batch = generate_shapes(n, split=split, seed=seed, image_size=size)
    out = {}
    for sigma in sigmas:
        noise = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(seed))
        images = (batch.images + sigma * noise).clamp(-1, 1)
        out[sigma] = attribute_accuracy(model, images, batch.labels)
    return out


def train_evaluator(
    model_config: EvaluatorConfig,
    train_config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    install: bool | None = False,
) -> tuple[TrainResult, dict[str, float], Path | None]:
    """Train the evaluator into `out`; returns the result, the last clean test accuracy per
    attribute, and where it was installed (the user cache that tinygen.eval.prompt_fidelity
    loads from; None when not installed, and on ranks but 0).

    install: True installs (replacing a judge installed before, with a line that says so),
    False does not, None installs only where no judge is installed yet -- every later
    evaluation is scored by the installed judge, so it is never replaced unasked.
    """
    from tinygen.eval.fidelity import default_install_dir, install_evaluator

    torch.manual_seed(train_config.seed)
    run_config = {
        "model_type": "shapes-evaluator",
        "model": dataclasses.asdict(model_config),
        "data": {"world": "shapes", "split": "evaluator", "augment": "noise+blur"},
    }
    result = fit(
        EvaluatorTask(model_config),
        train_config,
        out,
        run_config,
        resume=resume,
        progress=progress,
    )
    final = next((row for row in reversed(result.history) if "acc_shape" in row), {})
    accuracy = {k[len("acc_") :]: v for k, v in final.items() if k.startswith("acc_")}
    installed = None
    if install is False or result.interrupted or not is_main_process():
        return result, accuracy, installed
    existing = default_install_dir() / io.CONFIG_FILE
    if existing.is_file() and install is None:
        print(
            f"kept the judge installed in {existing.parent} (every eval uses it); pass "
            "--install to replace it with this one",
            file=sys.stderr,
        )
    else:
        if existing.is_file():
            print(f"replacing the judge installed in {existing.parent}", file=sys.stderr)
        installed = install_evaluator(out)
    return result, accuracy, installed
