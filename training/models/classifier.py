"""A small residual CNN for 8x8 handwritten digits (scikit-learn's ``load_digits``).

The whole architecture lives in this file. ``DigitClassifier`` maps raw pixels (0..16, the
scale ``load_digits`` uses) to logits; ``DigitClassifierForServing`` wraps it with a softmax
so the exported graph takes raw pixels and returns probabilities.

Layout (C = ``n_channels``)::

    images (B, 1, 8, 8) in 0..16
      -> scale to roughly [-1, 1]          (inside the graph)
      -> stem: 3x3 conv, BN, ReLU           (B, C, 8, 8)
      -> n_blocks residual blocks at 8x8    (B, C, 8, 8)
      -> 1x1 conv + 2x2 stride-2 downsample (B, 2C, 4, 4)
      -> n_blocks residual blocks at 4x4    (B, 2C, 4, 4)
      -> global average pool, dropout       (B, 2C)
      -> linear                             (B, n_classes)

Each residual block is depthwise-separable: a 3x3 depthwise conv (spatial mixing, one filter
per channel) followed by a 1x1 pointwise conv (channel mixing), each with batch norm, added to
the block's input. This keeps the parameter count small (about 34k in all) while the
receptive field still covers the whole 8x8 image from the downsample on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ClassifierConfig:
    image_size: int = 8  # height and width of the input images, in pixels
    n_classes: int = 10  # number of output classes (the digits 0-9)
    n_channels: int = 32  # feature channels at 8x8; doubled after the downsample to 4x4
    n_blocks: int = 2  # residual blocks at each resolution (so 2 * n_blocks in all)
    dropout: float = 0.2  # dropout on the pooled features before the final linear layer
    pixel_max: float = 16.0  # largest raw pixel value; inputs are scaled by 2 / pixel_max - 1


class SeparableResidualBlock(nn.Module):
    """x + BN(pointwise(ReLU(BN(depthwise(x))))), then ReLU; keeps the shape (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.depthwise(x)))  # (B, C, H, W)
        h = self.bn2(self.pointwise(h))  # (B, C, H, W)
        return F.relu(x + h)


class Downsample(nn.Module):
    """Halve the resolution and change the channel count: (B, C, H, W) -> (B, C', H/2, W/2).

    A residual block of its own: a 3x3 stride-2 conv path plus a 1x1 projection shortcut of the
    2x2-average-pooled input (the 1x1 conv is what lets the shortcut change channel count).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn_shortcut = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))  # (B, C', H/2, W/2)
        s = self.bn_shortcut(self.shortcut(F.avg_pool2d(x, 2)))  # (B, C', H/2, W/2)
        return F.relu(h + s)


class DigitClassifier(nn.Module):
    """Raw 0..16 pixels (B, 1, 8, 8) -> class logits (B, n_classes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        assert config.image_size % 2 == 0, f"image_size must be even, got {config.image_size}"
        self.config = config
        c = config.n_channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks_hi = nn.Sequential(*[SeparableResidualBlock(c) for _ in range(config.n_blocks)])
        self.down = Downsample(c, 2 * c)
        self.blocks_lo = nn.Sequential(*[SeparableResidualBlock(2 * c) for _ in range(config.n_blocks)])
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * c, config.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        assert images.dim() == 4 and tuple(images.shape[1:]) == (1, s, s), (
            f"expected images of shape (B, 1, {s}, {s}), got {tuple(images.shape)}"
        )
        assert images.dtype == torch.float32, f"expected float32 images, got {images.dtype}"
        x = images * (2.0 / self.config.pixel_max) - 1.0  # (B, 1, 8, 8) in [-1, 1]
        x = self.stem(x)  # (B, C, 8, 8)
        x = self.blocks_hi(x)  # (B, C, 8, 8)
        x = self.down(x)  # (B, 2C, 4, 4)
        x = self.blocks_lo(x)  # (B, 2C, 4, 4)
        x = x.mean(dim=(2, 3))  # (B, 2C)
        return self.head(self.dropout(x))  # (B, n_classes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DigitClassifierForServing(nn.Module):
    """What gets exported: raw 0..16 pixels (B, 1, 8, 8) -> probabilities (B, n_classes)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.classifier(images), dim=-1)  # (B, n_classes), rows sum to 1
