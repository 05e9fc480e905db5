"""``--model tiny``: a test-size network (four conv layers, ~25 k parameters, any input size).

Not for real training: it exists so that tests, examples and smoke runs whose subject is not the
network (scheduling, NaN stops, time limits, signals, resume, tracking, run folders, option
refusals) run in seconds on a CPU, through the same ``--model`` option that real runs use, so
subprocess and ``torchrun`` tests can select it too.
"""
from __future__ import annotations

import torch
from torch import nn

from faceignite.models.base import EmbeddingModel, init_weights

WIDTHS = (8, 16, 32, 64)


class TinyTrunk(nn.Module):
    """Four stride-2 3×3 conv → BN → ReLU layers, then global average pooling: 64 features."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        inp = 3
        for width in WIDTHS:
            layers += [nn.Conv2d(inp, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            inp = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


class TinyNet(EmbeddingModel):
    """The tiny trunk and a Linear → BN embedding (the ResNets' head)."""

    def __init__(self, architecture: str = "tiny", embedding_dim: int = 128):
        super().__init__()
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = TinyTrunk()
        self.embedding = nn.Sequential(nn.Linear(WIDTHS[-1], embedding_dim),
                                       nn.BatchNorm1d(embedding_dim))
        init_weights(self)
