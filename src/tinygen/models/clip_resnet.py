"""A small ResNet image tower for CLIP, the alternative to the ViT.

CLIP's "modified ResNet" (Radford et al. 2021, sec. 2.4) replaces global average pooling
with attention pooling: the mean of the final feature map, plus a learned position
embedding, queries the spatial positions through one multi-head attention. Here the stem
is a single 3x3 convolution (our images are 32x32, not 224x224), followed by stages of
basic residual blocks (He et al. 2016) that halve the resolution and double the width, and
the attention pool uses the shared `tinygen.nn.attention.Attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinygen.nn.attention import Attention


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity (Goyal et al. 2017)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AttentionPool2d(nn.Module):
    """Pool a (B, C, h, w) feature map to (B, C) with attention from its mean (CLIP)."""

    def __init__(self, spatial: int, channels: int, n_head: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(
            torch.randn(spatial * spatial + 1, channels) / channels**0.5
        )
        self.attn = Attention(channels, n_head)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos_embedding
        return self.attn(x)[:, 0]  # the mean token's output, (B, C)


class ResNetTower(nn.Module):
    """Stem, `len(layers)` stages of basic blocks (the first at full resolution, each later
    one halving it and doubling the width), attention pooling. Returns (B, width * 2^(S-1))."""

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        width: int,
        layers: tuple[int, ...] | list[int],
        n_head: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = width
        for i, n_blocks in enumerate(layers):
            out_channels = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(channels, out_channels, stride)]
            blocks += [BasicBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        spatial = image_size // 2 ** (len(layers) - 1)
        self.out_dim = channels
        self.pool = AttentionPool2d(spatial, channels, n_head)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(images)))  # (B, out_dim)
