"""Embedding networks, one module per family, behind one registry (:mod:`.registry`).

* :mod:`.resnet` — torchvision ResNet-34/50/101 + Linear → BN head (``EmbeddingNet``), any size;
* :mod:`.iresnet` — iResNet-18/34/50/100 (ArcFace's improved residual units), 112×112;
* :mod:`.mobilefacenet` — MobileFaceNet (~1 M parameters), 112×112;
* :mod:`.vgg` — torchvision VGG16 / VGG16-BN + Linear → BN head (the second original system), ≥ 32 px;
* :mod:`.tiny` — a test-size network (~25 k parameters, any size) for tests and smoke runs.

Every model has ``forward`` (raw embedding, for the losses), ``embed`` (L2-normalised),
``architecture`` and ``embedding_dim``; its weights are ``backbone.*`` and ``embedding.*``.
"""
from faceignite.models.base import EmbeddingModel
from faceignite.models.iresnet import IResNet
from faceignite.models.mobilefacenet import MobileFaceNet
from faceignite.models.registry import (ARCHITECTURES, SPECS, Architecture, build_model,
                                        check_image_size, spec)
from faceignite.models.resnet import EmbeddingNet, load_backbone_weights

__all__ = ["ARCHITECTURES", "SPECS", "Architecture", "EmbeddingModel", "EmbeddingNet", "IResNet",
           "MobileFaceNet", "build_model", "check_image_size", "load_backbone_weights", "spec"]
