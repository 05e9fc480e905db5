"""Each network's input convention: ``(pixel − mean) / std`` per RGB channel, pixels in 0..255.

    insightface  (x − 127.5) / 127.5   arcface_torch's r18 … r200, mbf; faceignite's iResNets
    facenet      (x − 127.5) / 128     facenet-pytorch's Inception-ResNet-v1
    imagenet     ImageNet mean / std   torchvision's ResNets

``--normalize insightface|facenet|imagenet|MEAN,STD`` (pixel units; or 3 means and 3 stds) picks
one; by default each architecture's own (:data:`faceignite.models.registry.SPECS`).  Checkpoints
written before this option existed were trained with ImageNet's: :func:`of_checkpoint_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from faceignite.errors import FaceIgniteError

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # of pixel / 255
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """``name`` and per-channel (R, G, B) ``mean`` and ``std`` in pixel units (0..255)."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def unit_mean(self) -> tuple[float, ...]:
        """``mean / 255``: albumentations' ``Normalize`` convention (``max_pixel_value`` 255)."""
        return tuple(m / 255.0 for m in self.mean)

    def unit_std(self) -> tuple[float, ...]:
        return tuple(s / 255.0 for s in self.std)

    def metadata(self) -> dict[str, Any]:
        """What an export records: name, colour order, mean and std (pixel units)."""
        return {"normalize": self.name, "color": "RGB", "mean": list(self.mean),
                "std": list(self.std), "formula": "(pixel - mean) / std, pixels 0..255"}


NAMED: dict[str, Normalization] = {
    "insightface": Normalization("insightface", (127.5,) * 3, (127.5,) * 3),
    "facenet": Normalization("facenet", (127.5,) * 3, (128.0,) * 3),
    "imagenet": Normalization("imagenet", tuple(255.0 * m for m in IMAGENET_MEAN),
                              tuple(255.0 * s for s in IMAGENET_STD)),
}


def parse_normalize(text: str, option: str = "--normalize") -> Normalization:
    """A named convention, or ``MEAN,STD`` / ``M1,M2,M3,S1,S2,S3`` in pixel units."""
    text = str(text).strip()
    if text.lower() in NAMED:
        return NAMED[text.lower()]
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 6) or any(s <= 0 for s in values[len(values) // 2:]):
        raise FaceIgniteError(f"{option} {text!r}: use insightface, facenet, imagenet, or MEAN,STD "
                              f"in pixel units (e.g. 127.5,128; or 3 means and 3 stds), std > 0")
    half = len(values) // 2
    mean = tuple(values[:half]) * (3 // half)
    std = tuple(values[half:]) * (3 // half)
    return Normalization(text, mean, std)  # type: ignore[arg-type]


def for_architecture(architecture: str) -> Normalization:
    """The convention ``architecture``'s weights expect (its registry entry)."""
    from faceignite.models.registry import spec

    return NAMED[spec(architecture).normalize]


def resolve(normalize: str | None, architecture: str) -> Normalization:
    """``--normalize`` when given, else the architecture's own."""
    return parse_normalize(normalize) if normalize else for_architecture(architecture)


def of_checkpoint_config(config: Mapping | None) -> Normalization:
    """The convention a checkpoint's model was trained with: its ``normalize`` option, resolved
    when it was trained; ImageNet's for checkpoints from before the option."""
    value = (config or {}).get("normalize")
    return parse_normalize(value) if value else NAMED["imagenet"]


def of_export(info: Mapping) -> Normalization:
    """The convention an exported model's JSON (``input``) or ONNX metadata records."""
    entry = info.get("input", info)
    if entry.get("mean") is None or entry.get("std") is None:
        return NAMED["imagenet"]
    name = str(entry.get("normalize") or "recorded")
    return Normalization(name, tuple(float(v) * (255.0 if max(entry["std"]) <= 1 else 1.0)
                                     for v in entry["mean"]),
                         tuple(float(v) * (255.0 if max(entry["std"]) <= 1 else 1.0)
                               for v in entry["std"]))


def of_model(model: Any) -> Normalization:
    """The convention set on a (possibly wrapped) model or its bound ``embed``, else its
    architecture's, else ImageNet."""
    model = getattr(model, "__self__", model)  # model.embed passed as the callable
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    found = getattr(model, "normalization", None)
    if isinstance(found, Normalization):
        return found
    architecture = getattr(model, "architecture", None)
    try:
        return for_architecture(architecture) if architecture else NAMED["imagenet"]
    except FaceIgniteError:
        return NAMED["imagenet"]
