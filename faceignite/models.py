"""Embedding networks: a torchvision ResNet backbone and a Linear → BatchNorm1d embedding head."""
from __future__ import annotations

import logging
import os
import socket

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from faceignite.errors import FaceIgniteError

logger = logging.getLogger(__name__)

ARCHITECTURES = ("resnet34", "resnet50", "resnet101")  # torchvision backbones


class EmbeddingNet(nn.Module):
    """ResNet trunk → global pool → Linear → BatchNorm1d (``embedding_dim``).

    ``forward`` returns the raw embedding that training losses use; :meth:`embed` returns the
    L2-normalised embedding used for verification.
    """

    def __init__(self, architecture: str = "resnet34", embedding_dim: int = 128):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise FaceIgniteError(f"unknown architecture {architecture!r}: choose from {ARCHITECTURES}")
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        self.backbone = getattr(torchvision.models, architecture)(weights=None)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.embedding = nn.Sequential(nn.Linear(features, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x).float(), dim=1)


def _download_imagenet_weights(architecture: str) -> dict:
    weights = torchvision.models.get_model_weights(architecture).DEFAULT
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, timeout, DNS failure …
        raise FaceIgniteError(
            f"could not download ImageNet weights for {architecture} ({exc.__class__.__name__}: "
            f"{exc}); download {weights.url} elsewhere and pass the file: --pretrained PATH") from exc
    finally:
        socket.setdefaulttimeout(previous)


def load_backbone_weights(model: EmbeddingNet, pretrained: str) -> None:
    """Load ImageNet weights into the backbone from a local file, or ``'download'`` them."""
    if pretrained.lower() in ("download", "true", "imagenet"):
        state = _download_imagenet_weights(model.architecture)
        source = "torchvision download"
    else:
        if not os.path.isfile(pretrained):
            raise FaceIgniteError(f"--pretrained weights file not found: {pretrained}")
        try:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FaceIgniteError(f"cannot read --pretrained weights {pretrained}: {exc}") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        source = pretrained
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise FaceIgniteError(
            f"--pretrained {source} does not fit {model.architecture}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})")
    logger.info("backbone initialised from ImageNet weights (%s)", source)


def build_model(architecture: str, embedding_dim: int = 128, pretrained: str | None = None
                ) -> EmbeddingNet:
    """The embedding network; ``pretrained``: a local weights file, ``'download'`` or ``None``."""
    model = EmbeddingNet(architecture, embedding_dim)
    if pretrained and pretrained.lower() not in ("false", "none", "0"):
        load_backbone_weights(model, pretrained)
    return model
