"""The diffusion family's recipes: named presets, the Trainer tasks of the diffusion model and
of the noisy classifier that guides it, and the builders behind `tinygen train diffusion` /
`train noisy-classifier`.

A preset is a `Preset` whose model is a `DiffusionConfig` (the U-Net, the noise schedule and
the objective); a noisy classifier trained from the same preset gets the same U-Net shape
and schedule, so it can guide the model it was trained beside.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from tinygen.data.image_data import ImageData
from tinygen.diffusion.objective import draw_timesteps_and_noise
from tinygen.errors import TinygenError
from tinygen.models.diffusion import DiffusionConfig, DiffusionModel
from tinygen.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from tinygen.nn.unet import UNetConfig
from tinygen.recipes.common import Preset, fit
from tinygen.train.config import TrainConfig
from tinygen.train.trainer import TrainResult

# "shapes" is the 30-minute CPU recipe of docs/benchmarks.md; "tiny" is for tests and smoke
# runs (16 px, so its attention resolution 8 is a feature-map size of the two-level U-Net).
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        DiffusionConfig(
            unet=UNetConfig(
                image_size=16,
                base_channels=16,
                channel_mult=(1, 2),
                num_res_blocks=1,
                attention_resolutions=(8,),
                head_channels=16,
                norm_groups=8,
            ),
        ),
        TrainConfig(
            max_iters=200,
            batch_size=16,
            learning_rate=1e-3,
            warmup_iters=20,
            eval_interval=100,
            eval_iters=4,
            log_interval=10,
            weight_decay=0.0,
            ema_decay=0.99,
        ),
        description="seconds-long smoke test: a 16 px two-level U-Net",
    ),
    "shapes": Preset(
        # measured in docs/benchmarks.md: cosine + v-prediction reach >= 90% prompt fidelity
        DiffusionConfig(
            unet=UNetConfig(
                base_channels=32,
                channel_mult=(1, 2, 4),
                num_res_blocks=1,
                attention_resolutions=(8,),
            ),
            beta_schedule="cosine",
            prediction_type="v_prediction",
        ),
        # sized for 30 minutes on one CPU thread with --precision bf16 (AMX): ~55-65 images/s
        # (a second thread adds almost nothing for this model; docs/benchmarks.md trains it as
        # two one-thread DDP processes, 2,500 steps of batch 2 x 24)
        TrainConfig(
            max_iters=2400,
            batch_size=48,
            learning_rate=2e-3,
            warmup_iters=100,
            eval_interval=800,
            eval_iters=5,
            log_interval=20,
            weight_decay=0.0,
            ema_decay=0.998,
        ),
        description="the 30-minute CPU recipe: 32 px, cosine schedule, v-prediction",
    ),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise TinygenError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


class DiffusionTask:
    """The Trainer task of a diffusion model (see tinygen.train.trainer.Task).

    Each batch carries its own t, noise and null-condition mask, drawn with the batch
    generator, so evaluation batches are identical at every evaluation and resume is exact.
    """

    items_name = "images"

    def __init__(self, model: DiffusionModel, data: ImageData) -> None:
        if model.config.class_conditional and data.labels is None:
            raise TinygenError(
                f"--cond class needs labelled data; {data.source} has none (use --data shapes "
                "or --cond none)"
            )
        self.model, self.data = model, data
        self.sample_seed = 0

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        images, labels = self.data.draw(split, batch_size, generator)
        t, noise = draw_timesteps_and_noise(
            images.shape, self.model.config.num_train_timesteps, generator
        )
        batch = {"x0": images, "t": t, "noise": noise}
        if self.model.config.class_conditional:
            batch["labels"] = labels
            batch["drop"] = (
                torch.rand(batch_size, generator=generator) < self.model.config.cond_drop_prob
            )
        return batch

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        return self.model.training_loss(
            batch["x0"],
            batch["noise"],
            batch["t"],
            batch.get("labels"),
            batch.get("drop"),
            forward=model,
        )

    def on_end(self, model: nn.Module, run_dir: str | Path) -> None:
        """A grid of 16 DDIM-25 samples (one per class for a class-conditional model)."""
        from tinygen.data.image_folder import save_image_grid

        n = 16
        labels = None
        if self.model.config.class_conditional:
            labels = torch.arange(n) * max(1, self.model.config.num_classes // n)
        gen = torch.Generator().manual_seed(self.sample_seed)
        steps = min(25, self.model.config.num_train_timesteps)
        images = model.generate(n, labels=labels, guidance=2.0, steps=steps, generator=gen)
        save_image_grid(images, Path(run_dir) / "samples.png", nrow=8, scale=4)


class NoisyClassifierTask:
    """Trainer task: cross-entropy of the class of x_0 given (x_t, t), t uniform
    (Dhariwal & Nichol 2021, sec. 4), on the noise of the diffusion objective."""

    items_name = "images"

    def __init__(self, model: NoisyClassifier, data: ImageData, *, clean: bool = False) -> None:
        if data.labels is None:
            raise TinygenError(
                f"a noisy classifier needs labelled data; {data.source} has none "
                "(use --data shapes)"
            )
        if data.num_classes != model.config.num_classes:
            raise TinygenError(
                f"the data has {data.num_classes} classes but the classifier "
                f"{model.config.num_classes}; pass --num-classes {data.num_classes}"
            )
        self.model, self.data, self.clean = model, data, clean

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        """A batch of (x_0, label, t, eps); with `clean`, t = 0 throughout (the first stage
        of the warm start, `recipes/noisy_classifier_init.py`)."""
        images, labels = self.data.draw(split, batch_size, generator)
        t, noise = draw_timesteps_and_noise(
            images.shape, self.model.config.num_train_timesteps, generator
        )
        if self.clean:
            t = torch.zeros_like(t)
        return {"x0": images, "labels": labels, "t": t, "noise": noise}

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        return self.model.training_loss(
            batch["x0"], batch["noise"], batch["t"], batch["labels"], forward=model
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation accuracy at four noise levels (t = 0, T/4, T/2, 3T/4)."""
        images, labels = self.data.images["val"][:256], self.data.labels["val"][:256]
        device = next(model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        gen = torch.Generator().manual_seed(step)
        noise = torch.randn(images.shape, generator=gen).to(device)
        out = {}
        steps = model.config.num_train_timesteps
        for t_value in (0, steps // 4, steps // 2, 3 * steps // 4):
            t = torch.full((len(images),), t_value, dtype=torch.long, device=device)
            logits = model(model.schedule.add_noise(images, noise, t), t)
            out[f"acc_t{t_value}"] = (logits.argmax(-1) == labels).float().mean().item()
        return out


def train_diffusion(
    config: DiffusionConfig,
    train_config: TrainConfig,
    data: ImageData,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a diffusion model on `data` into the run directory `out`."""
    if config.class_conditional and data.num_classes:
        config = dataclasses.replace(config, num_classes=data.num_classes)
    torch.manual_seed(train_config.seed)
    model = DiffusionModel(config)
    run_config = {
        "model_type": "diffusion",
        "model": dataclasses.asdict(config),
        "data": data.describe(),
    }
    return fit(
        DiffusionTask(model, data), train_config, out, run_config, resume=resume, progress=progress
    )


def train_noisy_classifier(
    config: NoisyClassifierConfig,
    train_config: TrainConfig,
    data: ImageData,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    clean: bool = False,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train a noisy classifier on `data` into the run directory `out`.

    clean: train on x_0 only (t = 0). init_from: a run trained with `clean` to start from,
    its time embedding made constant (`recipes/noisy_classifier_init.py`); not read on
    resume, where the checkpoint holds the weights and config.json the record."""
    torch.manual_seed(train_config.seed)
    model = NoisyClassifier(config)
    run_config = {
        "model_type": "noisy-classifier",
        "model": dataclasses.asdict(config),
        "data": data.describe(),
        "clean": clean,
    }
    if init_from is not None and clean:
        raise TinygenError("--init-from fine-tunes on noisy images; drop --clean")
    if init_from is not None and not resume:  # (a resume keeps the record in config.json)
        from tinygen.io import weights_fingerprint
        from tinygen.recipes.noisy_classifier_init import warm_start

        warm_start(init_from, config)(model)
        run_config["init_from"] = {"run": str(init_from), "weights": weights_fingerprint(init_from)}
    return fit(
        NoisyClassifierTask(model, data, clean=clean),
        train_config,
        out,
        run_config,
        resume=resume,
        progress=progress,
    )
