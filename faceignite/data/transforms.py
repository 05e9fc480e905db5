"""Albumentations pipelines for aligned face crops, in each network's input convention.

``--augment`` (training only):

* ``box``  — box crops (MTCNN box + margin): random resized crop of 80–100 % of the area,
  horizontal flip, light colour jitter;
* ``flip`` — five-point crops (already on the template; insightface's recipe): horizontal flip
  only, so the landmarks stay where the crop put them;
* ``none`` — resize and normalise only.

Normalisation: :class:`~faceignite.data.normalization.Normalization` (``--normalize``; each
architecture's own by default).
"""
from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2

from faceignite.data.normalization import (IMAGENET_MEAN, IMAGENET_STD, NAMED, Normalization)

AUGMENTATIONS = ("flip", "box", "none")
# ImageNet statistics (of pixel / 255), kept for callers of the earlier constants.
MEAN = IMAGENET_MEAN
STD = IMAGENET_STD


def _normalize(normalization: Normalization | None) -> A.Normalize:
    n = normalization or NAMED["imagenet"]
    return A.Normalize(mean=n.unit_mean(), std=n.unit_std(), max_pixel_value=255.0)


def train_transform(image_size: int, normalization: Normalization | None = None,
                    augment: str = "box") -> A.Compose:
    """The training pipeline of ``augment`` (see the module), then ``normalization``."""
    if augment == "box":
        steps = [A.RandomResizedCrop(size=(image_size, image_size), scale=(0.8, 1.0),
                                     ratio=(0.9, 1.1)),
                 A.HorizontalFlip(p=0.5),
                 A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)]
    elif augment == "flip":
        steps = [A.Resize(image_size, image_size), A.HorizontalFlip(p=0.5)]
    elif augment == "none":
        steps = [A.Resize(image_size, image_size)]
    else:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    return A.Compose([*steps, _normalize(normalization), ToTensorV2()])


def eval_transform(image_size: int, normalization: Normalization | None = None) -> A.Compose:
    """Resize to ``image_size`` and normalise: the same framing as training, no randomness."""
    return A.Compose([A.Resize(image_size, image_size), _normalize(normalization), ToTensorV2()])
