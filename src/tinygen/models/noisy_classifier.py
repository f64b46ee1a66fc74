"""A noisy classifier for classifier guidance (Dhariwal & Nichol 2021, sec. 4).

Classifier guidance steers a diffusion model with grad_x log p(y | x_t, t), so the
classifier must judge *noisy* images at every timestep. As in ADM, it is the U-Net's
encoder half (time embedding, down path, middle) followed by a head: GroupNorm, SiLU,
global average pooling and a linear layer to the class logits. It is trained with
cross-entropy on x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps at uniformly drawn t, on the same
noise schedule as the diffusion model it will guide (its Trainer task, which draws t and eps
as the diffusion objective does, is `tinygen.recipes.diffusion.NoisyClassifierTask`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.diffusion.schedule import BETA_SCHEDULES, NoiseSchedule
from tinygen.fields import check_fields
from tinygen.nn.resnet import norm_groups_for
from tinygen.nn.unet import UNetConfig, UNetEncoder


@dataclass
class NoisyClassifierConfig:
    unet: UNetConfig = field(
        default_factory=lambda: UNetConfig(
            base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1
        )
    )
    num_classes: int = field(
        default=48, metadata={"help": "classes (48 (colour, shape) pairs)", "min": 2}
    )
    beta_schedule: str = field(
        default="linear",
        metadata={"help": "noise schedule", "choices": BETA_SCHEDULES, "flag": "--schedule"},
    )
    num_train_timesteps: int = field(
        default=1000, metadata={"help": "steps of the forward process", "min": 1}
    )

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)

    def validate(self) -> None:
        check_fields(self)


class NoisyClassifier(nn.Module):
    """x_t (B, C, H, W), t (B,) -> logits (B, num_classes)."""

    def __init__(self, config: NoisyClassifierConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        # the encoder takes no class labels: the label is what it predicts
        self.encoder = UNetEncoder(
            UNetConfig(
                **{**asdict(config.unet), "num_classes": 0, "context_dim": None, "cond_emb_dim": 0}
            )
        )
        ch = self.encoder.out_channels
        self.norm = nn.GroupNorm(norm_groups_for(ch, config.unet.norm_groups), ch)
        self.head = nn.Linear(ch, config.num_classes)
        self.schedule = NoiseSchedule(config.beta_schedule, config.num_train_timesteps)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        h, _, _ = self.encoder(x_t, t)  # (B, C, H/f, W/f)
        h = F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, C)
        return self.head(h)

    def training_loss(
        self,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        labels: Tensor,
        *,
        forward: nn.Module | None = None,
    ) -> Tensor:
        x_t = self.schedule.add_noise(x0, noise, t)
        logits = (forward or self)(x_t, t)
        return F.cross_entropy(logits.float(), labels)
