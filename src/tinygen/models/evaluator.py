"""The shapes evaluator: a small CNN that reads shape, colour, size and position.

It is trained on the shapes generator's ground truth and then judges other models'
images ("does this picture show a large red circle on the left?"), like the Inception
network behind FID, but exact for our world. Since diffusion samples are rarely as clean
as the generator's pictures, training adds Gaussian noise of a random level and a slight
blur, so small imperfections do not flip its verdict.

Architecture: three stages of 3x3 convolutions (GroupNorm, SiLU), the second and third
entered with a stride-2 convolution (32 -> 16 -> 8 pixels), an adaptive pool to 4x4 that
keeps *where* things are (a global average would throw position away), a linear layer to
the `feature_dim` features (used by tinygen.eval.feature_distance), and one linear head
per attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.data.shapes import ATTRIBUTES, generate_shapes
from tinygen.errors import TinygenError


@dataclass
class EvaluatorConfig:
    image_size: int = 32  # images of another size are resized to this
    width: int = 16  # channels of the first stage; doubled at each downsampling
    feature_dim: int = 256

    def validate(self) -> None:
        for name in ("image_size", "width", "feature_dim"):
            if getattr(self, name) <= 0:
                raise TinygenError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width % 8:
            raise TinygenError(f"width must be a multiple of 8 (GroupNorm), got {self.width}")


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, c_out),
        nn.SiLU(),
    )


class ShapesEvaluator(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> logits per attribute (ATTRIBUTES order)."""

    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            _conv(3, w),
            _conv(w, w),  # (B, w, S, S)
            _conv(w, 2 * w, 2),
            _conv(2 * w, 2 * w),  # (B, 2w, S/2, S/2)
            _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 4 * w),  # (B, 4w, S/4, S/4)
            nn.AdaptiveAvgPool2d(4),  # (B, 4w, 4, 4): a coarse map that keeps position
            nn.Flatten(),
        )
        self.to_features = nn.Linear(4 * w * 16, config.feature_dim)
        self.heads = nn.ModuleDict(
            {
                name: nn.Linear(config.feature_dim, len(values))
                for name, values in ATTRIBUTES.items()
            }
        )

    def _check(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise TinygenError(
                f"the evaluator takes RGB images of shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return images

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (B, feature_dim): the input of the attribute heads."""
        return F.silu(self.to_features(self.body(self._check(images))))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.features(images)
        return {name: head(h) for name, head in self.heads.items()}  # name -> (B, classes)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """Predicted class index per attribute, (N,) each, in evaluation mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: dict[str, list[Tensor]] = {name: [] for name in self.heads}
        for chunk in images.split(batch_size):
            logits = self(chunk.to(device).float())
            for name, value in logits.items():
                parts[name].append(value.argmax(-1).cpu())
        self.train(was_training)
        return {name: torch.cat(value) for name, value in parts.items()}


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
        self._test = None

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict:
        seed = int(torch.randint(2**58, (1,), generator=generator)) * 2 + (split != "train")
        batch = generate_shapes(
            batch_size, split="evaluator", seed=seed, image_size=self.config.image_size
        )
        images = augment(batch.images, torch.Generator().manual_seed(seed))
        return {"images": images, **{k: batch.labels[k] for k in ATTRIBUTES}}

    def loss(self, model: nn.Module, batch: dict) -> Tensor:
        logits = model(batch["images"])
        return sum(F.cross_entropy(logits[k], batch[k]) for k in ATTRIBUTES)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Per-attribute accuracy on clean "test" images (seed 0)."""
        if self._test is None:
            self._test = generate_shapes(
                self.n_test, split="test", seed=0, image_size=self.config.image_size
            )
        return {
            f"acc_{k}": v
            for k, v in attribute_accuracy(model, self._test.images, self._test.labels).items()
        }


def attribute_accuracy(
    model: ShapesEvaluator, images: Tensor, labels: dict[str, Tensor]
) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the label, per attribute."""
    predicted = model.predict(images)
    return {k: (predicted[k] == labels[k]).float().mean().item() for k in ATTRIBUTES}


def accuracy_under_noise(
    model: ShapesEvaluator,
    *,
    n: int = 2000,
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2),
    split: str = "test",
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """Per-attribute accuracy on `n` images of `split` with Gaussian noise of std `sigma`
    (in [-1, 1] units) added and clamped, for each sigma: how the evaluator fares on the
    residual noise a diffusion sampler may leave."""
    batch = generate_shapes(n, split=split, seed=seed, image_size=model.config.image_size)
    out = {}
    for sigma in sigmas:
        noise = torch.randn(batch.images.shape, generator=torch.Generator().manual_seed(seed))
        images = (batch.images + sigma * noise).clamp(-1, 1)
        out[sigma] = attribute_accuracy(model, images, batch.labels)
    return out
