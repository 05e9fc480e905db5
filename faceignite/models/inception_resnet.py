"""FaceNet's Inception-ResNet-v1 (Schroff et al. 2015; davidsandberg's facenet), 160×160, 512-d.

Built from facenet-pytorch's own class (``facenet_pytorch.models.inception_resnet_v1``), never
rewritten and never downloading: its layers up to the dropout are ``backbone.*`` (facenet-pytorch's
names), its ``last_linear`` → ``last_bn`` head is ``embedding.0`` / ``embedding.1``, so its
weight files (``20180402-114759-vggface2.pt``) map onto it by prefix
(:mod:`faceignite.models.weight_files`).  Input: RGB, ``(pixel − 127.5) / 128``.
"""
from __future__ import annotations

import torch
from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
from torch import nn

from faceignite.models.base import EmbeddingModel

INPUT_SIZE = 160
FEATURES = 1792
HEAD = ("last_linear", "last_bn", "logits")


class InceptionResnetV1Trunk(InceptionResnetV1):
    """facenet-pytorch's network without its head: image → 1792 pooled (dropout) features."""

    def __init__(self, dropout: float = 0.6):
        super().__init__(pretrained=None, classify=False, dropout_prob=dropout)
        for name in HEAD:
            if hasattr(self, name):
                delattr(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, layer in self.named_children():  # registration order = facenet-pytorch's forward
            x = layer(x)
        return torch.flatten(x, 1)


class InceptionResnetV1Net(EmbeddingModel):
    """The trunk and facenet-pytorch's head: Linear 1792 → D (no bias) → BN (eps 0.001)."""

    input_size = None  # fully convolutional with global pooling; 160 px is its training size

    def __init__(self, architecture: str = "inception_resnet_v1", embedding_dim: int = 512):
        super().__init__()
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = InceptionResnetV1Trunk()
        self.embedding = nn.Sequential(nn.Linear(FEATURES, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim, eps=0.001, momentum=0.1))
