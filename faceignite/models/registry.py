"""The one list of architectures behind ``--model`` and :func:`build_model`, with what each needs.

    model = build_model("mobilefacenet", 128)                 # raw embedding: model(x); unit: model.embed(x)
    check_image_size("iresnet50", 160)                        # FaceIgniteError: needs --image_size 112

This module imports no torch, so ``faceignite.config`` can read :data:`ARCHITECTURES` cheaply.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")


@dataclass(frozen=True)
class Architecture:
    """What the rest of faceignite needs to know about one architecture."""

    family: str                 # module under faceignite.models: resnet | iresnet | vgg | ...
    cls: str                    # the class in that module, built as cls(name, embedding_dim)
    input_size: int | None      # the only image side (pixels) it accepts; None: any
    imagenet: bool              # torchvision ImageNet weights exist (--pretrained download)
    embedding_dim: int          # the size its papers and the field use
    crop: str                   # the alignment its recipe trains on (python -m faceignite.align)
    normalize: str = "imagenet"  # the input convention its weights expect (--normalize)
    min_size: int = 1           # the smallest image side (pixels) it accepts


_BOX = "box (MTCNN box + margin, --template box)"
_FIVE = "five-point ArcFace 112x112 (--template arcface)"
_IRESNET = Architecture("iresnet", "IResNet", 112, False, 512, _FIVE, "insightface")
SPECS: dict[str, Architecture] = {
    "resnet34": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    "resnet50": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    "resnet101": Architecture("resnet", "EmbeddingNet", None, True, 128, _BOX),
    # the second original system's network: torchvision VGG16 (+ BN variant), sides >= 32 px
    "vgg16": Architecture("vgg", "VGGEmbeddingNet", None, True, 128, _BOX, min_size=32),
    "vgg16_bn": Architecture("vgg", "VGGEmbeddingNet", None, True, 128, _BOX, min_size=32),
    # insightface's arcface_torch names (its files load exactly); iresnet<N>: aliases
    **{name: _IRESNET for name in ("r18", "r34", "r50", "r100", "r200")},
    **{f"iresnet{n}": _IRESNET for n in (18, 34, 50, 100, 200)},
    "mbf": Architecture("mbf", "MBF", 112, False, 512, _FIVE, "insightface"),
    "mobilefacenet": Architecture("mobilefacenet", "MobileFaceNet", 112, False, 128, _FIVE,
                                  "insightface"),
    # FaceNet's network, facenet-pytorch's class (its VGGFace2 / CASIA-WebFace files load)
    "inception_resnet_v1": Architecture("inception_resnet", "InceptionResnetV1Net", None, False,
                                        512, _BOX, "facenet"),
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
                image_size: int | None = None, normalize: str | None = None) -> Any:
    """The embedding network (``forward``: raw embedding, ``embed``: L2-normalised,
    ``architecture``, ``embedding_dim``, ``normalization``: its input convention).

    ``pretrained``: a local weights file (faceignite's, or the field's own: an arcface_torch
    backbone file, a facenet-pytorch file), ``'download'`` (torchvision ResNets and VGGs only)
    or ``None``; ``image_size``: checked against what the architecture accepts; ``normalize``:
    ``--normalize`` (default: the architecture's own convention).
    """
    from faceignite.data.normalization import resolve

    facts = spec(architecture)
    check_image_size(architecture, image_size)
    module = importlib.import_module(f"faceignite.models.{facts.family}")
    model = getattr(module, facts.cls)(architecture, int(embedding_dim))
    model.normalization = resolve(normalize, architecture)
    if pretrained and pretrained.lower() not in ("false", "none", "0"):
        load_pretrained(model, pretrained, facts)
    return model


def load_pretrained(model: Any, pretrained: str, facts: Architecture) -> None:
    """``--pretrained`` into ``model``: ImageNet weights for the ResNets' and VGGs' backbone;
    for the face networks a local file, either the field's own (an arcface_torch backbone file,
    a facenet-pytorch file: every tensor of the network loaded, none left random) or
    faceignite's backbone weights (keys with or without ``backbone.``; its ``embedding.*`` too
    when present).  A file that does not fit: one line naming the architecture it holds, or its
    first misfit."""
    from faceignite.models import resnet, weight_files

    if facts.imagenet:
        resnet.load_backbone_weights(model, pretrained)
        return
    if pretrained.lower() in ("download", "true", "imagenet"):
        raise FaceIgniteError(f"--pretrained {pretrained}: no ImageNet weights exist for "
                              f"{model.architecture}; pass a local file of its backbone weights, or "
                              f"--finetune a faceignite checkpoint")
    given = resnet.read_weights_file(pretrained)
    if weight_files.is_field_file(facts.family, given):  # the whole network, head included
        _load_exactly(model, weight_files.to_faceignite(facts.family, given), pretrained, given)
        return
    trunk = {k.removeprefix("backbone."): v for k, v in given.items()
             if not k.startswith("embedding.")}
    _load_exactly(model.backbone, trunk, pretrained, given, model)
    head = {k.removeprefix("embedding."): v for k, v in given.items()
            if k.startswith("embedding.")}
    expected = model.embedding.state_dict()
    if head and set(head) == set(expected) and all(
            tuple(v.shape) == tuple(expected[k].shape) for k, v in head.items()):
        model.embedding.load_state_dict(head)
    elif head:
        logger.info("--pretrained %s: backbone loaded; its embedding head (another size) is not: "
                    "a new %d-d head", pretrained, model.embedding_dim)


def _load_exactly(target: Any, state: dict, path: str, given: dict, model: Any = None) -> None:
    """``target.load_state_dict(state)`` when every tensor fits exactly, else one clear line."""
    expected = target.state_dict()
    if set(state) != set(expected) or any(tuple(expected[k].shape) != tuple(v.shape)
                                          for k, v in state.items()):
        raise FaceIgniteError(misfit_message(path, model or target, given, expected, state))
    target.load_state_dict(state)


def misfit_message(path: str, model: Any, given: dict, expected: dict, state: dict) -> str:
    """One line: the architecture the file ``path`` holds when its shapes tell (and it is not
    ``model``'s), else the embedding size or the first tensor that does not fit."""
    from faceignite.models import weight_files

    found = weight_files.identify(given)
    here = SPECS.get(model.architecture)
    if found and SPECS.get(found[0]) is not None and (SPECS[found[0]] != here or (
            here.family == "iresnet" and found[0] != canonical(model.architecture))):
        return (f"--pretrained {path} does not fit {model.architecture}: this file holds "
                f"{found[1]}: use --model {found[0]}")
    dim = weight_files.head_dim(here.family if here else "", given)
    if dim is not None and dim != model.embedding_dim:
        return (f"--pretrained {path} holds a {dim}-d embedding head, not "
                f"{model.embedding_dim}-d: use --embedding_dim {dim}")
    return (f"--pretrained {path} does not fit {model.architecture}: "
            f"{weight_files.first_misfit(expected, state)}")


def canonical(architecture: str) -> str:
    """insightface's name of an iResNet alias (``iresnet50`` → ``r50``); others unchanged."""
    if architecture.startswith("iresnet") and architecture[7:].isdigit():
        return f"r{architecture[7:]}"
    return architecture
