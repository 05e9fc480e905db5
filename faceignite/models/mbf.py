"""insightface's MobileFaceNet, ``mbf`` (arcface_torch ``get_mbf``: scale 2, blocks 1-4-6-2), 112×112.

Another network than the paper's :mod:`.mobilefacenet` (twice the width, 128/256 channels, and
insightface's stage layout); it exists here so that arcface_torch's ``mbf`` files load exactly.
Module names inside ``backbone`` are arcface_torch's (``layers``, ``conv_sep``; its ``features``
GDC is split into ``backbone.gdc`` and the ``embedding`` head: Linear (no bias) → BN), so a file
maps onto it by prefix (:mod:`faceignite.models.weight_files`).
"""
from __future__ import annotations

import torch
from torch import nn

from faceignite.models.base import EmbeddingModel, conv_bn, init_weights

INPUT_SIZE = 112
SCALE = 2
BLOCKS = (1, 4, 6, 2)
FEATURES = 512


class ConvBlock(nn.Module):
    """``layers``: conv (no bias) → BN → PReLU, or → BN only when ``linear``."""

    def __init__(self, inp: int, out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 linear: bool = False):
        super().__init__()
        self.layers = conv_bn(inp, out, kernel, stride, groups, prelu=not linear,
                              padding=1 if kernel == 3 else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1×1 expand to ``groups`` → 3×3 grouped conv (stride) → linear 1×1, + input if ``residual``."""

    def __init__(self, inp: int, out: int, residual: bool, stride: int, groups: int):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(ConvBlock(inp, groups), ConvBlock(groups, groups, 3, stride, groups),
                                    ConvBlock(groups, out, linear=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    """``blocks`` residual :class:`DepthWise` units of width ``c``."""

    def __init__(self, c: int, blocks: int, groups: int):
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(c, c, True, 1, groups) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MBFTrunk(nn.Module):
    """Up to and including the 7×7 global depthwise convolution: 512 features per image."""

    def __init__(self):
        super().__init__()
        c1, c2 = 64 * SCALE, 128 * SCALE
        self.layers = nn.ModuleList([
            ConvBlock(3, c1, 3, 2),
            ConvBlock(c1, c1, 3, 1, groups=64),   # blocks[0] == 1
            DepthWise(c1, c1, False, 2, 128), Residual(c1, BLOCKS[1], 128),
            DepthWise(c1, c2, False, 2, 256), Residual(c2, BLOCKS[2], 256),
            DepthWise(c2, c2, False, 2, 512), Residual(c2, BLOCKS[3], 256)])
        self.conv_sep = ConvBlock(c2, FEATURES)
        self.gdc = ConvBlock(FEATURES, FEATURES, INPUT_SIZE // 16, groups=FEATURES, linear=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return torch.flatten(self.gdc(self.conv_sep(x)), 1)


class MBF(EmbeddingModel):
    """The ``mbf`` trunk and insightface's Linear (no bias) → BN embedding."""

    input_size = INPUT_SIZE

    def __init__(self, architecture: str = "mbf", embedding_dim: int = 512):
        super().__init__()
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = MBFTrunk()
        self.embedding = nn.Sequential(nn.Linear(FEATURES, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))
        init_weights(self)
