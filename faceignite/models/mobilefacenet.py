"""MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018): about 1 M parameters, 112×112 crops.

Table 1 of the paper, input 112×112×3 (t: expansion, c: channels, n: repeats, s: stride):

    conv 3×3                 c 64,  s 2          → 56×56
    depthwise conv 3×3       c 64,  s 1
    bottleneck  t 2          c 64,  n 5, s 2     → 28×28
    bottleneck  t 4          c 128, n 1, s 2     → 14×14
    bottleneck  t 2          c 128, n 6, s 1
    bottleneck  t 4          c 128, n 1, s 2     → 7×7
    bottleneck  t 2          c 128, n 2, s 1
    conv 1×1                 c 512
    linear GDConv 7×7        c 512 (global depthwise convolution, no activation)
    linear conv 1×1          c embedding (here: Linear → BN)

Bottlenecks are MobileNetV2's inverted residuals (1×1 expand → 3×3 depthwise → linear 1×1
project, residual when the stride is 1 and the width unchanged); every non-linearity is PReLU.
"""
from __future__ import annotations

import torch
from torch import nn

from faceignite.models.base import EmbeddingModel, conv_bn, init_weights

INPUT_SIZE = 112
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
FEATURES = 512


class Bottleneck(nn.Module):
    """1×1 expand (× ``t``) → 3×3 depthwise (stride) → linear 1×1 project, + input if shapes match."""

    def __init__(self, inp: int, out: int, stride: int, t: int):
        super().__init__()
        hidden = inp * t
        self.residual = stride == 1 and inp == out
        self.block = nn.Sequential(conv_bn(inp, hidden, 1),
                                   conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   conv_bn(hidden, out, 1, prelu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileFaceNetTrunk(nn.Module):
    """Everything up to the global depthwise convolution; returns 512 features per image."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 3, 2), conv_bn(64, 64, 3, 1, groups=64)]
        inp = 64
        for t, c, n, s in BOTTLENECKS:
            for i in range(n):
                layers.append(Bottleneck(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, FEATURES, 1))
        grid = INPUT_SIZE // 16
        layers.append(conv_bn(FEATURES, FEATURES, grid, groups=FEATURES, prelu=False,  # GDConv
                              padding=0))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


class MobileFaceNet(EmbeddingModel):
    """The MobileFaceNet trunk and a linear 1×1 (Linear, no bias) → BN embedding."""

    input_size = INPUT_SIZE

    def __init__(self, architecture: str = "mobilefacenet", embedding_dim: int = 128):
        super().__init__()
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = MobileFaceNetTrunk()
        self.embedding = nn.Sequential(nn.Linear(FEATURES, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))
        init_weights(self)
