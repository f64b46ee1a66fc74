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
per attribute. Its training recipe (augmentation, task, accuracy) is
`tinygen.recipes.evaluator`.

Two-object images ("a red circle to the left of a blue square") are read by *slot* heads
(`two_objects=True`): for each of the five places of the world (left, right, top, bottom,
centre) whether an object is there, and its colour, shape and size. A slot is a place, not
an object, so the judge never has to decide which object is "first": the prompt's relation
says at which places its two objects must be (`tinygen.eval.fidelity.pair_fidelity`), and a
colour on the wrong object -- the binding error of text-to-image models -- is read directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.data.shapes import ATTRIBUTES, POSITIONS
from tinygen.errors import TinygenError
from tinygen.fields import check_fields


@dataclass
class EvaluatorConfig:
    image_size: int = field(
        default=32, metadata={"help": "input size; other sizes are resized to it", "min": 4}
    )
    width: int = field(
        default=16,
        metadata={"help": "channels of the first stage, doubled at each downsampling", "min": 8},
    )
    feature_dim: int = field(default=256, metadata={"help": "width of the features", "min": 1})
    two_objects: bool = field(
        default=False, metadata={"help": "add the slot heads that read two-object images"}
    )

    def validate(self) -> None:
        check_fields(self)
        if self.width % 8:
            raise TinygenError(f"width must be a multiple of 8 (GroupNorm), got {self.width}")


SLOT_ATTRIBUTES = {
    "occupied": (False, True),
    "color": ATTRIBUTES["color"],
    "shape": ATTRIBUTES["shape"],
    "size": ATTRIBUTES["size"],
}


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
        self.slot_heads = None
        if config.two_objects:  # per place: occupied?, colour, shape, size
            self.slot_heads = nn.ModuleDict(
                {
                    name: nn.Linear(config.feature_dim, len(POSITIONS) * len(values))
                    for name, values in SLOT_ATTRIBUTES.items()
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
        """name -> logits (B, classes) per attribute of a one-object image; with slot heads
        also "slot_<name>" -> (B, 5 places, classes) for occupied/color/shape/size."""
        h = self.features(images)
        out = {name: head(h) for name, head in self.heads.items()}
        for name, head in (self.slot_heads or {}).items():
            out["slot_" + name] = head(h).view(h.shape[0], len(POSITIONS), -1)
        return out

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """Predicted class index per attribute, (N,) each (slots: (N, 5)), in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: dict[str, list[Tensor]] = {}
        for chunk in images.split(batch_size):
            logits = self(chunk.to(device).float())
            for name, value in logits.items():
                parts.setdefault(name, []).append(value.argmax(-1).cpu())
        self.train(was_training)
        return {name: torch.cat(value) for name, value in parts.items()}
