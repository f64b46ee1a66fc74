"""The PatchGAN discriminator of VQGAN's and LDM's first-stage loss (pix2pix's
`NLayerDiscriminator`, Isola et al. 2017, sec. 3.2.2; Esser et al. 2021, sec. 3.1).

A stack of 4x4 convolutions, `layers` of them with stride 2, that maps an image (B, 3, H, W)
to a grid of logits (B, 1, h, w): each logit judges one overlapping patch real or fake, so
the discriminator penalises texture and edges locally rather than the whole picture at
once. Layout, with `ndf = channels`:

    conv 4x4 s2 (3 -> ndf), LeakyReLU(0.2)
    per further stride-2 layer: conv 4x4 s2 (width doubles, at most 8 * ndf), norm, LeakyReLU
    conv 4x4 s1, norm, LeakyReLU, conv 4x4 s1 -> 1 logit per patch

Normalisation is GroupNorm where pix2pix uses BatchNorm: the loss calls the discriminator on
real and on fake batches separately, and batch statistics would tell them apart (and make
evaluation differ from training). Weights start at N(0, 0.02), norms' scales at N(1, 0.02),
as pix2pix's and taming's `weights_init`. The `steps` buffer counts the training run's
optimiser steps (the loss starts the GAN after a warm-up).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinygen.nn.resnet import norm_groups_for


class PatchDiscriminator(nn.Module):
    """(B, in_channels, H, W) images -> (B, 1, h, w) real/fake logits, one per patch."""

    def __init__(
        self, in_channels: int = 3, *, channels: int = 64, layers: int = 3, norm_groups: int = 32
    ) -> None:
        super().__init__()

        def norm(width: int) -> nn.Module:
            return nn.GroupNorm(norm_groups_for(width, norm_groups), width)

        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for n in range(1, layers):
            out = channels * min(2**n, 8)
            blocks += [nn.Conv2d(width, out, 4, 2, 1, bias=False), norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2**layers, 8)
        blocks += [nn.Conv2d(width, out, 4, 1, 1, bias=False), norm(out), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(out, 1, 4, 1, 1))
        self.main = nn.Sequential(*blocks)
        # optimiser steps of the run that trains it, for the GAN warm-up (saved with the
        # weights, so a resumed run starts the GAN at the same step)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)
