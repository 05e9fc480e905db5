"""torchvision VGG16 / VGG16-BN trunks with faceignite's Linear → BatchNorm1d embedding head.

The second original system ("face-recognition-supervised-by-center-loss") trained a standard
VGG16 on 112×112 crops.  The trunk here is torchvision's VGG without its last ``Linear``
(``classifier.6``): the 13 convolutions, torchvision's adaptive 7×7 pooling (so any side of at
least 32 pixels works: the five max-pools need it) and the two 4096-wide fully connected layers
(ReLU, dropout).  ImageNet weights (``--pretrained``) load into ``backbone.*`` as for the ResNets.
"""
from __future__ import annotations

import torch
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.models.base import EmbeddingModel

VGGS = ("vgg16", "vgg16_bn")
MIN_SIZE = 32  # pixels: five 2×2 max-pools


class VGGEmbeddingNet(EmbeddingModel):
    """VGG16 trunk (4096 features) → Linear → BatchNorm1d (``embedding_dim``); sides ≥ 32 px."""

    imagenet_head = "classifier.6."  # the ImageNet classifier, not part of the trunk

    def __init__(self, architecture: str = "vgg16", embedding_dim: int = 128):
        super().__init__()
        if architecture not in VGGS:
            raise FaceIgniteError(f"unknown architecture {architecture!r}: choose from {VGGS}")
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        import torchvision  # here, not at import: 2 CPU-s that a tiny-network process never needs

        self.backbone = getattr(torchvision.models, architecture)(weights=None)
        features = self.backbone.classifier[6].in_features
        self.backbone.classifier[6] = nn.Identity()
        self.embedding = nn.Sequential(nn.Linear(features, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))

    def check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        if min(x.shape[-2:]) < MIN_SIZE:
            raise FaceIgniteError(f"{self.architecture} takes images of at least {MIN_SIZE}x"
                                  f"{MIN_SIZE} pixels, got {tuple(x.shape[-2:])}: raise "
                                  f"--image_size")
