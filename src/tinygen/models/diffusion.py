"""A diffusion model: the U-Net, its noise schedule and objective, and how to sample it.

Training (Ho et al. 2020, Alg. 1) is `tinygen.diffusion.objective.diffusion_loss`: noise x_0
into x_t at a uniform t and regress the output on the target of the chosen parameterisation
-- eps (`epsilon`), x_0 (`sample`) or v (`v_prediction`, Salimans & Ho 2022) -- optionally
min-SNR-gamma weighted (Hang et al. 2023).

What the model is conditioned on is data: a `Condition` dict (`tinygen.models.conditioning`)
with class labels, token context for cross-attention and/or an embedding added to the time
embedding. Class conditioning (`conditioning="class"`) goes through a `LabelConditioner`: a
label embedding added to the time embedding (ADM); for classifier-free guidance (Ho &
Salimans 2022) the label is replaced by a learned null label (index `num_classes`) with
probability `cond_drop_prob` during training, so the same network predicts both
eps(x_t, y) and eps(x_t, null). With `label_factors` (e.g. (8, 6) for the shapes world's
(colour, shape) classes) a label is split into its attributes, each with its own embedding,
summed: pairs never seen in training still get a meaningful condition.

Sampling goes through the one loop, `tinygen.diffusion.sampling.sample`, with a
`SamplerConfig`: `denoise` returns the raw end of the chain (pixels, latents or vectors
alike), `generate` clamps it to the image range. The classifier-free wrapper and the
score-function guidance (a noisy classifier; Dhariwal & Nichol 2021, Alg. 1 and 2) come
from `tinygen.diffusion.guidance`. `x_start` + `strength` start the chain part-way down
(SDEdit image-to-image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from tinygen.data.image_data import ImageData  # noqa: F401 - it lived here before data/
from tinygen.diffusion import guidance as guidance_lib
from tinygen.diffusion.objective import diffusion_loss, min_snr_weights  # noqa: F401
from tinygen.diffusion.sampling import SamplerConfig, sample
from tinygen.diffusion.schedule import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule
from tinygen.errors import TinygenError
from tinygen.fields import check_fields
from tinygen.models.clip_image_conditioner import ClipImageConditioner, ClipImageConditionerConfig
from tinygen.models.conditioning import (
    Condition,
    Conditioner,
    LabelConditioner,
    TextConditioner,
    TextConditionerConfig,
    as_condition,
    drop_condition,
)
from tinygen.nn.unet import UNet, UNetConfig

CONDITIONINGS = ("none", "class", "text", "clip_image")
INPAINT_CHANNELS = 4  # the masked image (3) and the mask (1)
THRESHOLD_MAX = 1.5  # dynamic thresholding: the largest scale s (DeepFloyd IF's value)


@dataclass
class DiffusionConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    beta_schedule: str = field(
        default="linear",
        metadata={"help": "noise schedule", "choices": BETA_SCHEDULES, "flag": "--schedule"},
    )
    num_train_timesteps: int = field(
        default=1000, metadata={"help": "steps of the forward process", "min": 1}
    )
    prediction_type: str = field(
        default="epsilon",
        metadata={
            "help": "what the network predicts",
            "choices": PREDICTION_TYPES,
            "flag": "--objective",
        },
    )
    conditioning: str = field(
        default="none",
        metadata={
            "help": "none | class | text | clip_image",
            "choices": CONDITIONINGS,
            "flag": "--cond",
        },
    )
    text: TextConditionerConfig = field(
        default_factory=TextConditionerConfig,
        metadata={"help": "the text encoder when conditioning=text (GLIDE)"},
    )
    clip_image: ClipImageConditionerConfig = field(
        default_factory=ClipImageConditionerConfig,
        metadata={"help": "the CLIP-embedding input when conditioning=clip_image (unCLIP)"},
    )
    inpainting: bool = field(
        default=False,
        metadata={"help": "the U-Net also sees the masked image and the mask (GLIDE sec. 3.3)"},
    )
    num_classes: int = field(
        default=48, metadata={"help": "labels when conditioning=class", "min": 1}
    )
    label_factors: tuple[int, ...] = field(
        default=(),
        metadata={"help": "split labels into attributes, e.g. 8,6 (empty: one row per class)"},
    )
    cond_drop_prob: float = field(
        default=0.1,
        metadata={"help": "chance of the null label in training (CFG)", "min": 0, "below": 1},
    )
    min_snr_gamma: float = field(
        default=0.0, metadata={"help": "min-SNR-gamma; 0 disables", "min": 0}
    )

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        if isinstance(self.text, dict):
            self.text = TextConditionerConfig(**self.text)
        if isinstance(self.clip_image, dict):
            self.clip_image = ClipImageConditionerConfig(**self.clip_image)
        self.label_factors = tuple(self.label_factors)

    @property
    def class_conditional(self) -> bool:
        return self.conditioning == "class"

    def conditioner(self) -> Conditioner | None:
        """The conditioner of this model's `conditioning` (None: conditioned on raw keys)."""
        if self.conditioning == "text":
            return TextConditioner(self.text)
        if self.conditioning == "clip_image":
            return ClipImageConditioner(self.clip_image)
        if not self.class_conditional:
            return None
        return LabelConditioner(
            self.num_classes, label_factors=self.label_factors, drop_prob=self.cond_drop_prob
        )

    def unet_config(self) -> UNetConfig:
        """The U-Net config with the inputs this model needs: class rows (labels + null), the
        text encoder's width for cond_emb and context, 4 more channels for inpainting."""
        changes: dict = {"num_classes": 0}
        if self.class_conditional:
            changes["num_classes"] = self.conditioner().num_rows
        if self.conditioning == "text":
            changes.update(cond_emb_dim=self.text.width, context_dim=self.text.width)
        if self.conditioning == "clip_image":
            width = self.clip_image.width
            changes.update(cond_emb_dim=width, context_dim=width)
        if self.inpainting:
            changes["in_channels"] = self.unet.in_channels + INPAINT_CHANNELS
        return UNetConfig(**{**asdict(self.unet), **changes})

    def validate(self) -> None:
        check_fields(self)
        if self.label_factors and math.prod(self.label_factors) != self.num_classes:
            raise TinygenError(
                f"label_factors {self.label_factors} multiply to "
                f"{math.prod(self.label_factors)}, not num_classes={self.num_classes}"
            )


class DiffusionModel(nn.Module):
    """The U-Net plus the process it was trained for (schedule, objective, conditioning)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.conditioner: Conditioner | None = config.conditioner()
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

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Condition | Tensor | None = None,
        *,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The network output (eps, x_0 or v) for x_t (B, C, H, W) at timesteps t (B,).

        cond: a Condition dict, or a tensor of class labels (`labels=` is the same);
        unconditional models take none. An inpainting model also takes `masked_image` and
        `mask`, which join x_t as input channels.
        """
        cond = as_condition(cond if cond is not None else labels)
        if self.config.inpainting:
            if "masked_image" not in cond or "mask" not in cond:
                raise TinygenError(
                    "this is an inpainting model; the condition needs masked_image and mask"
                )
            x_t = torch.cat([x_t, cond["masked_image"].to(x_t), cond["mask"].to(x_t)], dim=1)
        return self.unet(x_t, t, **self.unet_inputs(cond))

    def unet_inputs(self, cond: Condition) -> dict[str, Tensor]:
        """The U-Net's keyword inputs for a condition: the conditioner's, or the raw keys
        (`context`, `context_mask` -> cross-attention, `embedding` -> cond_emb)."""
        if self.conditioner is not None:
            return self.conditioner.unet_inputs(cond)
        if "labels" in cond and cond["labels"] is not None:
            raise TinygenError("this model is unconditional; it takes no labels (--cond class)")
        if "tokens" in cond:
            raise TinygenError("this model has no text conditioner to encode caption tokens")
        names = {"context": "context", "context_mask": "context_mask", "embedding": "cond_emb"}
        return {names[key]: value for key, value in cond.items() if key in names}

    def null_condition(self, batch_size: int, device: torch.device | str = "cpu") -> Condition:
        if self.conditioner is None:
            raise TinygenError("this model is unconditional; it has no null condition")
        return self.conditioner.null_condition(batch_size, device)

    def embedding_rows(self, labels: Tensor | None) -> Tensor | None:
        """Labels (B,) -> the rows of the U-Net's class table (see LabelConditioner.rows)."""
        if labels is None or self.conditioner is None:
            return labels
        return self.conditioner.rows(labels)

    def training_loss(
        self,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        labels: Condition | Tensor | None = None,
        drop: Tensor | None = None,
        *,
        forward: Callable[..., Tensor] | None = None,
    ) -> Tensor:
        """The (weighted) MSE of Ho et al. Alg. 1 (`diffusion_loss`) for given x_0, eps, t (B,)
        and condition (class labels or a Condition dict).

        drop (B,) bool: which conditions become the null condition (classifier-free training).
        forward: the module to call (the trainer's compiled / DDP wrapper), default self.
        """
        forward = forward or self
        cond = as_condition(labels)
        if self.conditioner is not None and drop is not None:
            cond = drop_condition(cond, self.null_condition(1, x0.device), drop)

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return forward(x_t, t, cond if cond else None)

        return diffusion_loss(
            model_fn,
            self.schedule,
            x0,
            noise,
            t,
            prediction_type=self.config.prediction_type,
            min_snr_gamma=self.config.min_snr_gamma,
        )

    # -- sampling ----------------------------------------------------------------------------

    def check_labels(self, labels: Tensor | None, n: int) -> None:
        if labels is None:
            return
        LabelConditioner(self.config.num_classes).check(labels, n)

    @torch.no_grad()
    def denoise(
        self,
        n: int,
        *,
        cond: Condition | Tensor | None = None,
        guidance: float = 1.0,
        sampler: SamplerConfig | None = None,
        generator: torch.Generator | None = None,
        classifier: nn.Module | None = None,
        classifier_labels: Tensor | None = None,
        classifier_scale: float = 0.0,
        x_start: Tensor | None = None,
        strength: float = 1.0,
        shape: tuple[int, ...] | None = None,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
        log_score: guidance_lib.LogScore | None = None,
        score_scale: float = 0.0,
        post_step_fn: Callable[[Tensor, int], Tensor] | None = None,
        x_T: Tensor | None = None,
    ) -> Tensor:
        """Run the reverse process for n samples and return its raw end (no clamping), so
        pixels, latents and embeddings can all use it.

        cond: the condition of each sample (a conditional model needs one); `guidance` is
        the classifier-free scale s (0 unconditional, 1 conditional, > 1 sharper). With a
        noisy `classifier` and `classifier_labels`, its gradient steers the samples (DDPM:
        mean shift, Alg. 1; DDIM: eps shift, Alg. 2) -- for an unconditional model too.
        x_start + strength: start from x_start noised part-way down the chain (SDEdit).
        shape: the sample shape without the batch (default `image_shape`).
        log_score + score_scale: any differentiable score of the noisy sample (a noised
        CLIP's `guidance.clip_log_score`) steering the samples as the classifier does.
        post_step_fn: after every step (inpainting's `diffusion.inpainting.known_region_fn`).
        x_T: the starting noise (default drawn from `generator`).
        """
        sampler = sampler or SamplerConfig()
        device = next(self.parameters()).device
        if guidance < 0:
            raise TinygenError(f"guidance scale must be >= 0, got {guidance}")
        sampler.check_fits(self.config.num_train_timesteps)
        cond = as_condition(cond)
        if self.conditioner is not None:
            if self.config.class_conditional and "labels" not in cond:
                raise TinygenError("this model is class-conditional; give labels (--label)")
            if self.config.conditioning == "text" and "tokens" not in cond:
                raise TinygenError("this model is text-conditional; give a prompt")
            if self.config.conditioning == "clip_image" and "embedding" not in cond:
                raise TinygenError("this decoder needs CLIP image embeddings (cond embedding)")
            cond = {key: value.to(device) for key, value in cond.items()}
            # the null condition replaces the conditioner's keys only (not an inpainting input)
            null = {**cond, **self.null_condition(n, device)}
            model_fn = guidance_lib.classifier_free_guidance(self, cond, null, guidance)
        else:

            def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
                return self(x_t, t, cond or None)

        extra: dict = {}
        if classifier is not None and classifier_scale != 0:
            if classifier_labels is None:
                raise TinygenError("classifier guidance needs labels (--label)")
            if log_score is not None:
                raise TinygenError("guide with a classifier or a score, not both")
            check_classifier_matches(self, classifier)
            log_score = guidance_lib.classifier_log_score(classifier, classifier_labels.to(device))
            score_scale = classifier_scale
        if log_score is not None and score_scale != 0:
            if sampler.sampler == "ddpm":  # Alg. 1: shift the mean
                extra["mean_shift_fn"] = guidance_lib.score_mean_shift(log_score, score_scale)
            else:  # Alg. 2: shift eps
                extra["guidance_fn"] = guidance_lib.score_eps_shift(
                    log_score, score_scale, self.schedule, self.config.prediction_type
                )
        return sample(
            model_fn,
            (n, *(shape or self.image_shape)),
            schedule=self.schedule,
            prediction_type=self.config.prediction_type,
            generator=generator,
            device=device,
            progress=progress,
            callback=callback,
            sample_max_value=THRESHOLD_MAX,
            x_start=x_start,
            strength=strength,
            post_step_fn=post_step_fn,
            x_T=x_T,
            **sampler.sample_options(),
            **extra,
        )

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        labels: Tensor | None = None,
        cond: Condition | None = None,
        guidance: float = 1.0,
        sampler: str | SamplerConfig = "ddim",
        generator: torch.Generator | None = None,
        classifier: nn.Module | None = None,
        classifier_scale: float = 0.0,
        x_start: Tensor | None = None,
        strength: float = 1.0,
        callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
        progress: bool = False,
        **sampler_options: object,
    ) -> Tensor:
        """Draw n images (n, C, H, W) in [-1, 1]: `denoise`, clamped to the image range.

        labels (n,): the classes of a class-conditional model (or the classes a noisy
        `classifier` steers an unconditional one towards); `cond`: any other Condition.
        sampler: a `SamplerConfig`, or its name with the other settings as keywords
        (`steps`, `eta`, `spacing`, `clip_sample`, `thresholding`, `recompute_eps`; see
        SamplerConfig for what each does and why).
        x_start (n, C, H, W) in [-1, 1] and strength in [0, 1]: image-to-image (SDEdit,
        Meng et al. 2021) -- noise x_start to the timestep `strength` of the way up the chain
        and denoise from there; strength 0 returns x_start, 1 ignores it.
        """
        if isinstance(sampler, SamplerConfig):
            if sampler_options:
                raise TinygenError(
                    f"give either a SamplerConfig or sampler options, not both "
                    f"({sorted(sampler_options)})"
                )
            config = sampler
        else:
            known = {"steps", "eta", "spacing", "clip_sample", "thresholding", "recompute_eps"}
            if unknown := sorted(set(sampler_options) - known):
                raise TinygenError(f"unknown sampler options {unknown}; known: {sorted(known)}")
            config = SamplerConfig(sampler=sampler, **sampler_options)
        self.check_labels(labels, n)
        if cond is not None and labels is not None:
            raise TinygenError("give labels or cond, not both")
        if labels is not None and self.conditioner is not None:
            cond = self.conditioner(labels)
        if x_start is not None and tuple(x_start.shape) != (n, *self.image_shape):
            raise TinygenError(
                f"the init image has shape {tuple(x_start.shape[1:])} but this model draws "
                f"{self.image_shape}; resize it to {self.image_shape[1]} px"
            )
        return self.denoise(
            n,
            cond=cond,
            guidance=guidance,
            sampler=config,
            generator=generator,
            classifier=classifier,
            classifier_labels=labels,
            classifier_scale=classifier_scale,
            x_start=x_start,
            strength=strength,
            callback=callback,
            progress=progress,
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
