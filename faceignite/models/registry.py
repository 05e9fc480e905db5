"""The one list of architectures behind ``--model`` and :func:`build_model`, with what each needs.

    model = build_model("mobilefacenet", 128)                 # raw embedding: model(x); unit: model.embed(x)
    check_image_size("iresnet50", 160)                        # FaceIgniteError: needs --image_size 112

This module imports no torch, so ``faceignite.config`` can read :data:`ARCHITECTURES` cheaply.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from faceignite.errors import FaceIgniteError


@dataclass(frozen=True)
class Architecture:
    """What the rest of faceignite needs to know about one architecture."""

    family: str                 # module under faceignite.models: resnet | iresnet | vgg | ...
    cls: str                    # the class in that module, built as cls(name, embedding_dim)
    input_size: int | None      # the only image side (pixels) it accepts; None: any
    imagenet: bool              # torchvision ImageNet weights exist (--pretrained download)
    embedding_dim: int          # the size its papers and the field use
    crop: str                   # the alignment its recipe trains on (python -m faceignite.align)
    min_size: int = 1           # the smallest image side (pixels) it accepts


_BOX = "box (MTCNN box + margin, --template box)"
_FIVE = "five-point ArcFace 112x112 (--template arcface)"
SPECS: dict[str, Architecture] = {
    "resnet34": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    "resnet50": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    "resnet101": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    # the second original system's network: torchvision VGG16 (+ BN variant), sides >= 32 px
    "vgg16": Architecture("vgg", "VGGEmbeddingNet", None, True, 128, _BOX, min_size=32),
    "vgg16_bn": Architecture("vgg", "VGGEmbeddingNet", None, True, 128, _BOX, min_size=32),
    "iresnet18": Architecture("iresnet", "IResNet", 112, False, 512, _FIVE),
    "iresnet34": Architecture("iresnet", "IResNet", 112, False, 512, _FIVE),
    "iresnet50": Architecture("iresnet", "IResNet", 112, False, 512, _FIVE),
    "iresnet100": Architecture("iresnet", "IResNet", 112, False, 512, _FIVE),
    "mobilefacenet": Architecture("mobilefacenet", "MobileFaceNet", 112, False, 128, _FIVE),
    # test-size (~25 k parameters, any size): for tests and smoke runs, never for real training
    "tiny": Architecture("tiny", "TinyNet", None, False, 128, "any"),
}
ARCHITECTURES = tuple(SPECS)


def spec(architecture: str) -> Architecture:
    """The facts of ``architecture``; one-line error naming the choices when it is unknown."""
    try:
        return SPECS[architecture]
    except KeyError:
        raise FaceIgniteError(f"unknown architecture {architecture!r} (--model): choose from "
                              f"{', '.join(ARCHITECTURES)}") from None


def check_image_size(architecture: str, image_size: int | None) -> None:
    """One-line :class:`FaceIgniteError` when ``architecture`` cannot take ``image_size`` pixels."""
    facts = spec(architecture)
    if image_size is not None and int(image_size) < facts.min_size:
        raise FaceIgniteError(f"--model {architecture} needs --image_size {facts.min_size} or "
                              f"more, got --image_size {image_size}")
    needed = facts.input_size
    if needed is not None and image_size is not None and int(image_size) != needed:
        raise FaceIgniteError(f"--model {architecture} needs --image_size {needed} ({needed}x{needed} "
                              f"five-point crops: python -m faceignite.align SRC DST --template "
                              f"arcface), got --image_size {image_size}")


def build_model(architecture: str, embedding_dim: int = 128, pretrained: str | None = None,
                image_size: int | None = None) -> Any:
    """The embedding network (``forward``: raw embedding, ``embed``: L2-normalised,
    ``architecture``, ``embedding_dim``).

    ``pretrained``: a local weights file for the backbone, ``'download'`` (torchvision ResNets
    and VGGs only) or ``None``; ``image_size``: checked against what the architecture accepts.
    """
    facts = spec(architecture)
    check_image_size(architecture, image_size)
    module = importlib.import_module(f"faceignite.models.{facts.family}")
    model = getattr(module, facts.cls)(architecture, int(embedding_dim))
    if pretrained and pretrained.lower() not in ("false", "none", "0"):
        load_pretrained(model, pretrained, facts)
    return model


def load_pretrained(model: Any, pretrained: str, facts: Architecture) -> None:
    """``--pretrained`` into ``model.backbone``: ImageNet weights for the ResNets and VGGs; for the face
    backbones a local file of backbone weights (keys with or without ``backbone.``)."""
    from faceignite.models import resnet

    if facts.imagenet:
        resnet.load_backbone_weights(model, pretrained)
        return
    if pretrained.lower() in ("download", "true", "imagenet"):
        raise FaceIgniteError(f"--pretrained {pretrained}: no ImageNet weights exist for "
                              f"{model.architecture}; pass a local file of its backbone weights, or "
                              f"--finetune a faceignite checkpoint")
    state = resnet.read_weights_file(pretrained)
    state = {k.removeprefix("backbone."): v for k, v in state.items()
             if not k.startswith("embedding.")}
    try:
        model.backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise FaceIgniteError(f"--pretrained {pretrained} does not fit {model.architecture}: "
                              f"{str(exc).splitlines()[0]}") from None
