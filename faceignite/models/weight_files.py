"""The field's weight files: insightface's arcface_torch backbones and facenet-pytorch's
Inception-ResNet-v1, mapped onto faceignite's ``backbone.*`` / ``embedding.*`` names and back.

    state = to_faceignite("iresnet", torch.load("model.pt", weights_only=True))   # arcface_torch r50
    torch.save(to_field("iresnet", model.state_dict()), "model.pt")               # and back

Each family's mapping is a list of (the field's prefix, faceignite's prefix), the first match
wins; module names below those prefixes are the same on both sides.  :func:`identify` tells which
architecture a file holds from its tensor shapes, for one-line advice when it does not fit.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    # arcface_torch iresnet.py: trunk at the top level, head fc (Linear) → features (BN1d)
    "iresnet": (("fc.", "embedding.1."), ("features.", "embedding.2."), ("", "backbone.")),
    # arcface_torch mobilefacenet.py: features = GDC (LinearBlock, Flatten, Linear, BN1d)
    "mbf": (("features.layers.0.layers.", "backbone.gdc.layers."),
            ("features.layers.2.", "embedding.0."), ("features.layers.3.", "embedding.1."),
            ("", "backbone.")),
    # facenet-pytorch inception_resnet_v1.py: head last_linear → last_bn (logits: a classifier)
    "inception_resnet": (("last_linear.", "embedding.0."), ("last_bn.", "embedding.1."),
                         ("", "backbone.")),
}
HEAD_KEY = {"iresnet": "fc.weight", "mbf": "features.layers.2.weight",
            "inception_resnet": "last_linear.weight"}   # the head's Linear in the field's file
DROPPED = {"inception_resnet": ("logits.",)}            # a classifier of the training classes
IRESNET_UNITS = {(2, 2, 2, 2): "r18", (3, 4, 6, 3): "r34", (3, 4, 14, 3): "r50",
                 (3, 13, 30, 3): "r100", (6, 26, 60, 6): "r200"}


def is_field_file(family: str, state: Mapping[str, torch.Tensor]) -> bool:
    """``state`` is written by the field's own code for ``family`` (not by faceignite)."""
    return (family in HEAD_KEY and HEAD_KEY[family] in state
            and not any(k.startswith(("backbone.", "embedding.")) for k in state))


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def to_faceignite(family: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The field's state dict of ``family`` under faceignite's names (classifier rows dropped)."""
    dropped = DROPPED.get(family, ())
    return {_rename(k, PREFIXES[family]): v for k, v in state.items() if not k.startswith(dropped)}


def to_field(family: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """faceignite's state dict of ``family`` under the field's names (the inverse mapping)."""
    inverse = tuple((new, old) for old, new in PREFIXES[family])
    return {_rename(k, inverse): v for k, v in state.items()}


def head_dim(family: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The embedding size a file's head produces (the field's or faceignite's names), or None."""
    if family in HEAD_KEY and HEAD_KEY[family] in state:
        return int(state[HEAD_KEY[family]].shape[0])
    linears = [v for k, v in state.items() if k.startswith("embedding.") and k.endswith("weight")
               and v.ndim == 2]
    return int(linears[0].shape[0]) if linears else None


def _units(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    counts = []
    for stage in range(1, 5):
        found = {int(m.group(1)) for k in state
                 for m in [re.match(rf"{re.escape(prefix)}layer{stage}\.(\d+)\.", k)] if m}
        counts.append(max(found) + 1 if found else 0)
    return tuple(counts)


def identify(state: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(architecture, how it was told)`` of the network a state dict holds, from its keys and
    tensor shapes, or None when it cannot be told."""
    for owner, prefix in (("insightface", ""), ("faceignite", "backbone.")):
        if f"{prefix}layer1.0.bn1.weight" in state and f"{prefix}layer1.0.conv2.weight" in state \
                and f"{prefix}layer1.0.bn3.weight" in state:
            units = _units(state, prefix)
            name = IRESNET_UNITS.get(units)
            if name:
                return name, f"an {owner} {name} (layer3: {units[2]} units)"
    if "conv_sep.layers.0.weight" in state or "backbone.conv_sep.layers.0.weight" in state:
        return "mbf", "an insightface mbf (MobileFaceNet, scale 2)"
    if "conv2d_1a.conv.weight" in state or "backbone.conv2d_1a.conv.weight" in state:
        return "inception_resnet_v1", "a facenet-pytorch Inception-ResNet-v1"
    if "backbone.features.0.0.weight" in state and "backbone.features.18.0.weight" in state:
        return "mobilefacenet", "a faceignite mobilefacenet (the paper's)"
    for prefix in ("backbone.", ""):
        conv1 = state.get(f"{prefix}conv1.weight")
        if conv1 is not None and tuple(conv1.shape[-2:]) == (7, 7):
            units = _units(state, prefix)
            bottleneck = f"{prefix}layer1.0.conv3.weight" in state
            name = {(3, 4, 6, 3): "resnet50" if bottleneck else "resnet34",
                    (3, 4, 23, 3): "resnet101"}.get(units)
            if name:
                return name, f"a torchvision {name} (layer3: {units[2]} units)"
    return None


def first_misfit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
                 ) -> str:
    """The first tensor of ``given`` that does not fit ``expected`` (shape, or missing/extra
    name), in words."""
    for key, value in given.items():
        if key not in expected:
            return f"tensor {key} has no place in the network"
        if tuple(expected[key].shape) != tuple(value.shape):
            return (f"tensor {key} is {tuple(value.shape)}, the network's is "
                    f"{tuple(expected[key].shape)}")
    missing = [k for k in expected if k not in given]
    return f"tensor {missing[0]} is missing" if missing else "it does not fit"


def load_field_classifier(criterion: torch.nn.Module, pretrained: str) -> bool:
    """A facenet-pytorch file's ``logits.*`` (its 8,631 VGGFace2 or 10,575 CASIA-WebFace
    classes) into ``criterion.classifier`` (softmax + center loss) when the class count and the
    embedding size match exactly; True when copied.  Otherwise they stay unused (dropped)."""
    import logging

    from faceignite.models.resnet import read_weights_file

    classifier = getattr(criterion, "classifier", None)
    if not isinstance(classifier, torch.nn.Linear):
        return False
    state = read_weights_file(pretrained)
    weight, bias = state.get("logits.weight"), state.get("logits.bias")
    if weight is None or tuple(weight.shape) != tuple(classifier.weight.shape) or (
            bias is not None and (classifier.bias is None
                                  or tuple(bias.shape) != tuple(classifier.bias.shape))):
        return False
    with torch.no_grad():
        classifier.weight.copy_(weight)
        if bias is not None:
            classifier.bias.copy_(bias)
    logging.getLogger("faceignite").info("--pretrained %s: its %d-class logits are the classifier",
                                         pretrained, weight.shape[0])
    return True
