"""A conditional DCGAN for 8x8 handwritten digits (scikit-learn's ``load_digits``).

The whole architecture lives in this file. Both networks work on images scaled to [-1, 1];
``GeneratorForServing`` (the only part that is exported) maps the generator's tanh output
back to the 0..16 pixel scale of ``load_digits``.

Generator (C = ``g_channels``)::

    latent (B, L), labels (B,)
      -> concat(latent, embedding(labels))   (B, L + E)
      -> linear, reshape, BN, ReLU           (B, 2C, 2, 2)
      -> 4x4 stride-2 transposed conv, BN, ReLU  (B, C, 4, 4)
      -> 4x4 stride-2 transposed conv, BN, ReLU  (B, C/2, 8, 8)
      -> 3x3 conv, tanh                      (B, 1, 8, 8) in [-1, 1]

Discriminator (C = ``d_channels``), a projection discriminator (Miyato & Koyama, 2018)::

    images (B, 1, 8, 8), labels (B,)
      -> concat(images, label plane)         (B, 2, 8, 8)
      -> 3x3 conv, LeakyReLU                 (B, C, 8, 8)
      -> 4x4 stride-2 conv, BN, LeakyReLU    (B, 2C, 4, 4)
      -> 4x4 stride-2 conv, BN, LeakyReLU    (B, 4C, 2, 2)
      -> flatten, dropout                    (B, 16C) = h
      -> linear(h) + <embedding(labels), h>  (B,) real/fake logit

The label enters the discriminator twice: as an extra input plane (so early filters can use
it) and through the projection term, which scores how well the features match the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class GeneratorConfig:
    image_size: int = 8  # height and width of the images, in pixels (must be 8: 2 -> 4 -> 8)
    n_classes: int = 10  # number of classes the generator is conditioned on (digits 0-9)
    latent_dim: int = 32  # size L of the Gaussian noise vector fed to the generator
    embed_dim: int = 16  # size E of the generator's label embedding, concatenated to the noise
    g_channels: int = 64  # generator width C: channels at 4x4 (2C at 2x2, C/2 at 8x8)
    d_channels: int = 32  # discriminator width C: channels at 8x8 (2C at 4x4, 4C at 2x2)
    d_dropout: float = 0.3  # dropout on the discriminator's features (it overfits 1.8k images)
    pixel_max: float = 16.0  # largest pixel value of the served images (0..pixel_max)


class ConditionalGenerator(nn.Module):
    """(latent (B, L), labels (B,)) -> images (B, 1, 8, 8) in [-1, 1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        assert config.image_size == 8, f"the layer stack makes 8x8 images, got {config.image_size}"
        assert config.g_channels % 2 == 0, f"g_channels must be even, got {config.g_channels}"
        self.config = config
        c = config.g_channels
        self.embed = nn.Embedding(config.n_classes, config.embed_dim)
        self.project = nn.Linear(config.latent_dim + config.embed_dim, 2 * c * 2 * 2, bias=False)
        self.bn0 = nn.BatchNorm2d(2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.up2 = nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c // 2)
        self.to_image = nn.Conv2d(c // 2, 1, 3, padding=1)

    def forward(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        assert latent.dim() == 2 and latent.shape[1] == cfg.latent_dim, (
            f"expected latent of shape (B, {cfg.latent_dim}), got {tuple(latent.shape)}"
        )
        assert labels.dim() == 1 and labels.dtype == torch.int64, (
            f"expected int64 labels of shape (B,), got {labels.dtype} {tuple(labels.shape)}"
        )
        x = torch.cat([latent, self.embed(labels)], dim=1)  # (B, L + E)
        x = self.project(x).view(-1, 2 * cfg.g_channels, 2, 2)  # (B, 2C, 2, 2)
        x = F.relu(self.bn0(x))
        x = F.relu(self.bn1(self.up1(x)))  # (B, C, 4, 4)
        x = F.relu(self.bn2(self.up2(x)))  # (B, C/2, 8, 8)
        return torch.tanh(self.to_image(x))  # (B, 1, 8, 8) in [-1, 1]


class ProjectionDiscriminator(nn.Module):
    """(images (B, 1, 8, 8) in [-1, 1], labels (B,)) -> real/fake logits (B,)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.d_channels, config.image_size
        self.label_plane = nn.Embedding(config.n_classes, s * s)
        self.conv0 = nn.Conv2d(2, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.conv2 = nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * c)
        n_features = 4 * c * (s // 4) * (s // 4)
        self.dropout = nn.Dropout(config.d_dropout)
        self.linear = nn.Linear(n_features, 1)
        self.label_projection = nn.Embedding(config.n_classes, n_features)
        nn.init.normal_(self.label_projection.weight, std=0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        assert images.dim() == 4 and tuple(images.shape[1:]) == (1, s, s), (
            f"expected images of shape (B, 1, {s}, {s}), got {tuple(images.shape)}"
        )
        assert labels.shape == images.shape[:1], (
            f"expected one label per image, got {tuple(labels.shape)} for {tuple(images.shape)}"
        )
        plane = self.label_plane(labels).view(-1, 1, s, s)  # (B, 1, 8, 8)
        x = torch.cat([images, plane], dim=1)  # (B, 2, 8, 8)
        x = F.leaky_relu(self.conv0(x), 0.2)  # (B, C, 8, 8)
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)  # (B, 2C, 4, 4)
        x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)  # (B, 4C, 2, 2)
        h = self.dropout(x.flatten(1))  # (B, 16C)
        projection = (self.label_projection(labels) * h).sum(dim=1)  # (B,)
        return self.linear(h).squeeze(1) + projection  # (B,)


class GeneratorForServing(nn.Module):
    """What gets exported: (latent (B, L), labels (B,) int64) -> images (B, 1, 8, 8) in 0..16."""

    def __init__(self, generator: ConditionalGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = self.generator(latent, labels)  # (B, 1, 8, 8) in [-1, 1]
        return (images + 1.0) * (self.generator.config.pixel_max / 2)  # (B, 1, 8, 8) in 0..16
