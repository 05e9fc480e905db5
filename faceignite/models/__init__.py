"""Embedding networks, one module per family, behind one registry (:mod:`.registry`).

* :mod:`.resnet` — torchvision ResNet-34/50/101 + Linear → BN head (``EmbeddingNet``), any size;
* :mod:`.iresnet` — iResNet r18/r34/r50/r100/r200 (ArcFace's improved residual units), 112×112;
* :mod:`.mbf` — insightface's MobileFaceNet ``mbf`` (scale 2), 112×112;
* :mod:`.mobilefacenet` — MobileFaceNet of the paper (~1 M parameters), 112×112;
* :mod:`.inception_resnet` — FaceNet's Inception-ResNet-v1 (facenet-pytorch's class), 160 px;
* :mod:`.vgg` — torchvision VGG16 / VGG16-BN + Linear → BN head (the second original system), ≥ 32 px;
* :mod:`.tiny` — a test-size network (~25 k parameters, any size) for tests and smoke runs.

Every model has ``forward`` (raw embedding, for the losses), ``embed`` (L2-normalised),
``architecture``, ``embedding_dim`` and ``normalization`` (its input convention); its weights
are ``backbone.*`` and ``embedding.*``.  :mod:`.weight_files` maps the field's own files
(arcface_torch, facenet-pytorch) onto them and back.
"""
from faceignite.models.base import EmbeddingModel
from faceignite.models.iresnet import IResNet
from faceignite.models.mobilefacenet import MobileFaceNet
from faceignite.models.registry import (ARCHITECTURES, SPECS, Architecture, build_model,
                                        check_image_size, spec)
from faceignite.models.resnet import EmbeddingNet, load_backbone_weights

__all__ = ["ARCHITECTURES", "SPECS", "Architecture", "EmbeddingModel", "EmbeddingNet", "IResNet",
           "MobileFaceNet", "build_model", "check_image_size", "load_backbone_weights", "spec"]
