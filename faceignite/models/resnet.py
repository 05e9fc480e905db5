"""torchvision ResNets with a Linear → BatchNorm1d embedding head (the original trainer's model).

``EmbeddingNet`` keeps the state-dict keys of faceignite's first releases (``backbone.*`` is the
torchvision ResNet without its ``fc``, ``embedding.0`` the Linear, ``embedding.1`` the BN), so
existing checkpoints load.  ImageNet weights come from a local file or torchvision's download.
"""
from __future__ import annotations

import logging
import os
import socket

import torch
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.models.base import EmbeddingModel

logger = logging.getLogger(__name__)

RESNETS = ("resnet34", "resnet50", "resnet101")


class EmbeddingNet(EmbeddingModel):
    """ResNet trunk → global pool → Linear → BatchNorm1d (``embedding_dim``); any input size.

    ``forward`` returns the raw embedding that training losses use; :meth:`embed` returns the
    L2-normalised embedding used for verification.
    """

    def __init__(self, architecture: str = "resnet34", embedding_dim: int = 128):
        super().__init__()
        if architecture not in RESNETS:
            raise FaceIgniteError(f"unknown architecture {architecture!r}: choose from {RESNETS}")
        self.architecture = architecture
        self.embedding_dim = embedding_dim
        import torchvision  # here, not at import: 2 CPU-s that a tiny-network process never needs

        self.backbone = getattr(torchvision.models, architecture)(weights=None)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.embedding = nn.Sequential(nn.Linear(features, embedding_dim, bias=False),
                                       nn.BatchNorm1d(embedding_dim))


def _download_imagenet_weights(architecture: str) -> dict:
    import torchvision

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


def read_weights_file(pretrained: str) -> dict:
    """A state dict from a local ``--pretrained`` file (weights only; a ``state_dict`` key is
    unwrapped)."""
    if not os.path.isfile(pretrained):
        raise FaceIgniteError(f"--pretrained weights file not found: {pretrained}")
    from faceignite.checkpoint.files import safe_load  # code is refused, never run

    state = safe_load(pretrained)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_backbone_weights(model: EmbeddingModel, pretrained: str) -> None:
    """Load ImageNet weights into the backbone (a torchvision ResNet or VGG trunk) from a local
    file, or ``'download'`` them."""
    if pretrained.lower() in ("download", "true", "imagenet"):
        state = _download_imagenet_weights(model.architecture)
        source = "torchvision download"
    else:
        state = read_weights_file(pretrained)
        source = pretrained
    head = getattr(model, "imagenet_head", "fc.")  # the ImageNet classifier: not in the trunk
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith(head)]:
        raise FaceIgniteError(
            f"--pretrained {source} does not fit {model.architecture}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})")
    logger.info("backbone initialised from ImageNet weights (%s)", source)
