"""A diffusion model: the U-Net, its noise schedule and objective, and how to sample it.

Training (Ho et al. 2020, Alg. 1): draw t uniformly, noise x_0 into x_t = sqrt(ab_t) x_0 +
sqrt(1 - ab_t) eps, and regress the network output on the target of the chosen
parameterisation -- eps (`epsilon`), x_0 (`sample`) or v (`v_prediction`, Salimans & Ho
2022). Optional min-SNR-gamma weighting (Hang et al. 2023) caps the weight of the
low-noise steps, where the eps loss over-weights easy denoising:
    epsilon: w = min(SNR, g) / SNR;   sample: w = min(SNR, g);   v: w = min(SNR, g) / (SNR + 1).

Class conditioning (`conditioning="class"`): a label embedding added to the time embedding
(ADM). For classifier-free guidance (Ho & Salimans 2022) the label is replaced by a learned
null label (index `num_classes`) with probability `cond_drop_prob` during training, so the
same network predicts both eps(x_t, y) and eps(x_t, null). With `label_factors` (e.g.
(8, 6) for the shapes world's (colour, shape) classes) a label is split into its attributes,
each with its own embedding, summed: every colour and every shape embedding then learns from
all the images that show it (8x and 6x more than a per-class row), and pairs never seen in
training still get a meaningful condition.

Sampling goes through `tinygen.diffusion.sampling.sample` (DDPM or DDIM) with the
classifier-free wrapper of `tinygen.diffusion.guidance` and, optionally, a noisy classifier
for classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.diffusion import guidance as guidance_lib
from tinygen.diffusion.sampling import sample
from tinygen.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.nn.unet import UNet, UNetConfig

CONDITIONINGS = ("none", "class")
THRESHOLD_MAX = 1.5  # dynamic thresholding: the largest scale s (DeepFloyd IF's value)


@dataclass
class DiffusionConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    beta_schedule: str = field(
        default="linear", metadata={"help": "linear | scaled_linear | cosine"}
    )
    num_train_timesteps: int = 1000
    prediction_type: str = field(
        default="epsilon", metadata={"help": "epsilon | sample | v_prediction"}
    )
    conditioning: str = field(default="none", metadata={"help": "none | class"})
    num_classes: int = field(default=48, metadata={"help": "labels when conditioning=class"})
    label_factors: tuple[int, ...] = field(
        default=(),
        metadata={"help": "split labels into attributes, e.g. 8,6 (empty: one row per class)"},
    )
    cond_drop_prob: float = field(
        default=0.1, metadata={"help": "chance of the null label in training (CFG)"}
    )
    min_snr_gamma: float = field(default=0.0, metadata={"help": "min-SNR-gamma; 0 disables"})

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        self.label_factors = tuple(self.label_factors)

    @property
    def class_conditional(self) -> bool:
        return self.conditioning == "class"

    def unet_config(self) -> UNetConfig:
        """The U-Net config with the class-embedding rows this model needs (labels + null)."""
        labels = sum(self.label_factors) if self.label_factors else self.num_classes
        rows = labels + 1 if self.class_conditional else 0
        return UNetConfig(**{**asdict(self.unet), "num_classes": rows})

    def validate(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise TinygenError(
                f"unknown --schedule {self.beta_schedule!r}; choose one of "
                f"{', '.join(BETA_SCHEDULES)}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise TinygenError(
                f"unknown --objective {self.prediction_type!r}; choose one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        if self.conditioning not in CONDITIONINGS:
            raise TinygenError(f"unknown --cond {self.conditioning!r}; choose none or class")
        if self.class_conditional and self.num_classes < 1:
            raise TinygenError("class conditioning needs num_classes >= 1")
        if self.label_factors and math.prod(self.label_factors) != self.num_classes:
            raise TinygenError(
                f"label_factors {self.label_factors} multiply to "
                f"{math.prod(self.label_factors)}, not num_classes={self.num_classes}"
            )
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise TinygenError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.min_snr_gamma < 0:
            raise TinygenError(f"min_snr_gamma must be >= 0 (0 disables), got {self.min_snr_gamma}")


def min_snr_weights(snr: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, eq. 12 and its x_0/v forms).

    The weight turns each parameterisation's MSE into the x_0-space MSE weighted by
    min(SNR, gamma): the eps loss is SNR times the x_0 loss, the v loss (SNR + 1) times it.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


class DiffusionModel(nn.Module):
    """The U-Net plus the process it was trained for (schedule, objective, conditioning)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.unet = UNet(config.unet_config())
        self.schedule = NoiseSchedule(config.beta_schedule, config.num_train_timesteps)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        u = self.config.unet
        return (u.in_channels, u.image_size, u.image_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network output (eps, x_0 or v) for x_t (B, C, H, W) at timesteps t (B,)."""
        if not self.config.class_conditional:
            return self.unet(x_t, t, None)
        return self.unet(x_t, t, self.embedding_rows(labels))

    def embedding_rows(self, labels: Tensor | None) -> Tensor | None:
        """Labels (B,) -> the rows of the U-Net's class table: the label itself, or with
        `label_factors` its mixed-radix digits (B, k) (label = ((d0 * f1) + d1) * f2 + ...),
        each offset into its own block of rows; the null label is the last row."""
        factors = self.config.label_factors
        if labels is None or not factors:
            return labels
        digits, rest = [], labels
        for factor in reversed(factors):
            digits.append(rest % factor)
            rest = rest // factor
        offsets = torch.tensor([0, *factors[:-1]], device=labels.device).cumsum(0)
        rows = torch.stack(digits[::-1], dim=1) + offsets
        null_row = sum(factors)
        return torch.where((labels == self.null_label)[:, None], null_row, rows)

    def training_loss(
        self,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        labels: Tensor | None = None,
        drop: Tensor | None = None,
        *,
        forward: Callable[..., Tensor] | None = None,
    ) -> Tensor:
        """The (weighted) MSE of Ho et al. Alg. 1 for given x_0, eps, t (B,) and labels.

        drop (B,) bool: which labels become the null label (classifier-free training).
        forward: the module to call (the trainer's compiled / DDP wrapper), default self.
        """
        forward = forward or self
        if self.config.class_conditional:
            if labels is None:
                raise TinygenError("this model is class-conditional; the batch needs labels")
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = self.schedule.target(x0, noise, t, self.config.prediction_type)
        output = forward(x_t, t, labels)
        per_sample = F.mse_loss(output.float(), target.float(), reduction="none").mean((1, 2, 3))
        if self.config.min_snr_gamma > 0:
            weights = min_snr_weights(
                self.schedule.snr(t), self.config.min_snr_gamma, self.config.prediction_type
            )
            per_sample = per_sample * weights
        return per_sample.mean()

    # -- sampling ----------------------------------------------------------------------------

    def check_labels(self, labels: Tensor | None, n: int) -> None:
        if labels is None:
            return
        if labels.shape != (n,):
            raise TinygenError(f"need one label per image ({n}), got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.null_label):
            raise TinygenError(
                f"labels must be in [0, {self.null_label - 1}], got {sorted(set(labels.tolist()))}"
            )

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        labels: Tensor | None = None,
        guidance: float = 1.0,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
        clip_sample: bool = True,
        thresholding: bool = False,
        recompute_eps: bool = True,
        spacing: str = "leading",
    ) -> Tensor:
        """Draw n images (n, C, H, W) in [-1, 1].

        labels (n,): the classes of a class-conditional model; `guidance` is the
        classifier-free scale s (0 unconditional, 1 conditional, > 1 sharper). With a noisy
        `classifier` and labels, its gradient steers the samples (DDPM: mean shift, Alg. 1;
        DDIM: eps shift, Alg. 2) -- this works for an unconditional model too.
        clip_sample: clip each predicted x_0 to [-1, 1] before the step (the default of
        diffusers' DDPM and DDIM schedulers and of DDPM's reference code); it keeps an
        imperfect eps prediction at high noise from throwing pixels far out of range.
        thresholding: dynamic thresholding instead (Saharia et al. 2022, sec. 2.3): each
        predicted x_0 is clipped to [-s, s] and divided by s, s = its 99.5th-percentile
        |pixel| kept within [1, 1.5] (the cap of DeepFloyd IF's scheduler; diffusers' default
        cap of 1.0 would make this plain clipping), so strong guidance keeps its colours
        instead of saturating them at the clip.
        recompute_eps (DDIM): after clipping, take the noise direction from the clipped x_0,
        eps = (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t) (diffusers' `use_clipped_model_output`,
        GLIDE's choice). Without it the step pairs the clipped x_0 with the noise of the
        unclipped one, and under strong guidance x_t drifts towards the complementary colour
        (a red prompt turns cyan; docs/benchmarks.md measures it). diffusers' default is off.
        spacing: which `steps` of the training timesteps to visit, `leading` (0, k, 2k, ...;
        DDIM's and diffusers' default), `trailing` (from T - 1 down, so the first step starts
        at the noisiest timestep; Lin et al. 2023, Table 2) or `linspace`
        (`tinygen.diffusion.sampling.inference_timesteps`).
        """
        device = next(self.parameters()).device
        self.check_labels(labels, n)
        if guidance < 0:
            raise TinygenError(f"guidance scale must be >= 0, got {guidance}")
        if steps > self.config.num_train_timesteps:
            raise TinygenError(
                f"--steps {steps} exceeds the {self.config.num_train_timesteps} training steps; "
                f"use at most {self.config.num_train_timesteps}"
            )
        if self.config.class_conditional:
            if labels is None:
                raise TinygenError("this model is class-conditional; give labels (--label)")
            labels = labels.to(device)
            null = torch.full((1,), self.null_label, dtype=torch.long, device=device)
            model_fn = guidance_lib.classifier_free_guidance(self, labels, null, guidance)
        else:

            def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
                return self(x_t, t)

        extra: dict = {}
        if classifier is not None and classifier_scale != 0:
            if labels is None:
                raise TinygenError("classifier guidance needs labels (--label)")
            check_classifier_matches(self, classifier)
            y = labels.to(device)
            if sampler == "ddpm":
                extra["mean_shift_fn"] = guidance_lib.classifier_mean_shift(
                    classifier, y, classifier_scale
                )
            else:
                extra["guidance_fn"] = guidance_lib.classifier_eps_shift(
                    classifier, y, classifier_scale, self.schedule, self.config.prediction_type
                )
        return sample(
            model_fn,
            (n, *self.image_shape),
            schedule=self.schedule,
            sampler=sampler,
            num_inference_steps=steps,
            eta=eta,
            prediction_type=self.config.prediction_type,
            generator=generator,
            device=device,
            progress=progress,
            callback=callback,
            clip_sample=clip_sample,
            thresholding=thresholding,
            sample_max_value=THRESHOLD_MAX,
            use_clipped_model_output=recompute_eps,  # (ignored by DDPM, which needs no eps)
            spacing=spacing,
            **extra,
        ).clamp(-1, 1)


def check_classifier_matches(model: DiffusionModel, classifier: nn.Module) -> None:
    """A noisy classifier must have been trained on the same noise schedule."""
    config = getattr(classifier, "config", None)
    mine = (model.config.beta_schedule, model.config.num_train_timesteps)
    theirs = (getattr(config, "beta_schedule", None), getattr(config, "num_train_timesteps", None))
    if theirs != mine:
        raise TinygenError(
            f"the classifier was trained on schedule {theirs} but the diffusion model uses "
            f"{mine}; train the classifier with the same --schedule"
        )


# -- data and the training task ------------------------------------------------------------


class ImageData:
    """Training images (and class labels) for diffusion: the shapes world or a folder.

    `shapes`: `n_train` train-split and `n_val` (default n_train / 10, 64 to 1000)
    val-split images of the shapes world, drawn once; the label is the (colour, shape)
    class `combo_index` (48 classes). A folder: its images, the last tenth held out for
    validation, no labels.
    """

    def __init__(
        self,
        source: str = "shapes",
        *,
        image_size: int = 32,
        n_train: int = 20000,
        n_val: int | None = None,
        seed: int = 0,
    ) -> None:
        self.source = source
        n_val = n_val if n_val is not None else max(64, min(1000, n_train // 10))
        if source == "shapes":
            from tinygen.data.shapes import COLORS, SHAPES, ShapesDataset

            self.images, self.labels = {}, {}
            for split, n in (("train", n_train), ("val", n_val)):
                data = ShapesDataset(n, split=split, seed=seed, image_size=image_size)
                self.images[split] = data.images
                self.labels[split] = data.labels["color"] * len(SHAPES) + data.labels["shape"]
            self.num_classes = 48
            self.label_factors = (len(COLORS), len(SHAPES))  # label = colour * 6 + shape
        else:
            from tinygen.data.image_folder import ImageFolderDataset

            images = ImageFolderDataset(source, image_size=image_size).images
            n_val = max(1, len(images) // 10) if len(images) > 1 else 0
            train = images[: len(images) - n_val] if n_val else images
            self.images = {
                "train": train,
                "val": images[len(images) - n_val :] if n_val else images,
            }
            self.labels = None
            self.num_classes = 0
            self.label_factors = ()

    def describe(self) -> dict:
        return {
            "source": self.source,
            "n_train": len(self.images["train"]),
            "n_val": len(self.images["val"]),
        }

    def draw(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """A random batch (with replacement): images (B, C, H, W) and labels (B,) or None."""
        images = self.images[split]
        index = torch.randint(len(images), (batch_size,), generator=generator)
        labels = self.labels[split][index] if self.labels is not None else None
        return images[index], labels


class DiffusionTask:
    """The Trainer task of a diffusion model (see tinygen.train.trainer.Task).

    Each batch carries its own t, noise and null-label mask, drawn with the batch generator,
    so evaluation batches are identical at every evaluation and resume is exact.
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
        batch = {
            "x0": images,
            "t": torch.randint(
                self.model.config.num_train_timesteps, (batch_size,), generator=generator
            ),
            "noise": torch.randn(images.shape, generator=generator),
        }
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

    def on_end(self, model: nn.Module, run_dir) -> None:
        """A grid of 16 DDIM-25 samples (one per class for a class-conditional model)."""
        from pathlib import Path

        from tinygen.data.image_folder import save_image_grid

        n = 16
        labels = None
        if self.model.config.class_conditional:
            labels = torch.arange(n) * max(1, self.model.config.num_classes // n)
        gen = torch.Generator().manual_seed(self.sample_seed)
        steps = min(25, self.model.config.num_train_timesteps)
        images = model.generate(n, labels=labels, guidance=2.0, steps=steps, generator=gen)
        save_image_grid(images, Path(run_dir) / "samples.png", nrow=8, scale=4)
