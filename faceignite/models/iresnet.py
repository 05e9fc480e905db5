"""iResNet (Deng et al., ArcFace, CVPR 2019; insightface's "improved residual" ResNets) for
112×112 five-point crops.

* stem: 3×3 conv, stride 1 → BN → PReLU (keeps the full 112-px face, no max-pool);
* improved residual unit: BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN, plus the shortcut
  (1×1 conv (stride) → BN when the shape changes); four stages of 64/128/256/512 channels, each
  starting with stride 2: 112 → 56 → 28 → 14 → 7;
* output head ("E"): BN → Dropout → FC (512·7·7 → embedding) → BN.

Units per stage: r18 2-2-2-2, r34 3-4-6-3, r50 3-4-14-3, r100 3-13-30-3, r200 6-26-60-6
(insightface's names; ``iresnet18`` ... ``iresnet200`` are aliases); with a 512-d embedding about
24.0, 34.1, 43.6, 65.2 and 118.8 M parameters.  The trunk's module names are arcface_torch's,
and the head's ``embedding.1`` / ``embedding.2`` are its ``fc`` / ``features``
(:mod:`faceignite.models.weight_files` maps its files on load and export).
"""
from __future__ import annotations

import torch
from torch import nn

from faceignite.models.base import EmbeddingModel, init_weights

UNITS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3),
         "r200": (6, 26, 60, 6)}
UNITS.update({f"iresnet{name[1:]}": units for name, units in list(UNITS.items())})  # aliases
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
OUTPUT_GRID = INPUT_SIZE // 16   # 7: four stride-2 stages
BN_EPS = 1e-5


def _conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride, 1, bias=False)


class ImprovedResidual(nn.Module):
    """BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN, added to the (projected) input."""

    def __init__(self, inp: int, out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp, eps=BN_EPS)
        self.conv1 = _conv3x3(inp, out)
        self.bn2 = nn.BatchNorm2d(out, eps=BN_EPS)
        self.prelu = nn.PReLU(out)
        self.conv2 = _conv3x3(out, out, stride)
        self.bn3 = nn.BatchNorm2d(out, eps=BN_EPS)
        self.downsample = (nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                         nn.BatchNorm2d(out, eps=BN_EPS))
                           if stride != 1 or inp != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNetTrunk(nn.Module):
    """Stem and the four stages, then the head's BN; returns the flattened 512·7·7 features."""

    def __init__(self, units: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = _conv3x3(3, WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(WIDTHS[0])
        stages, inp = [], WIDTHS[0]
        for n, width in zip(units, WIDTHS):
            stages.append(nn.Sequential(*(ImprovedResidual(inp if i == 0 else width, width,
                                                           2 if i == 0 else 1) for i in range(n))))
            inp = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(WIDTHS[-1], eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.bn2(x), 1)


class IResNet(EmbeddingModel):
    """An iResNet trunk and the BN → Dropout → FC → BN head (``dropout``: its probability; 0 as in
    insightface's arcface_torch)."""

    input_size = INPUT_SIZE

    def __init__(self, architecture: str = "iresnet50", embedding_dim: int = 512,
                 dropout: float = 0.0):
        super().__init__()
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = IResNetTrunk(UNITS[architecture])
        self.embedding = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(WIDTHS[-1] * OUTPUT_GRID * OUTPUT_GRID, embedding_dim),
            nn.BatchNorm1d(embedding_dim, eps=BN_EPS))
        init_weights(self)
