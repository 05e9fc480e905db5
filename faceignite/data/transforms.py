"""Albumentations pipelines for aligned face crops (mild: faces are already centred)."""
from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2

# ImageNet statistics, so that --pretrained torchvision weights see the inputs they expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int) -> A.Compose:
    """Random mild crop (80–100 % of the area), horizontal flip, light colour jitter, normalise."""
    return A.Compose([
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        A.Normalize(mean=MEAN, std=STD),
        ToTensorV2(),
    ])


def eval_transform(image_size: int) -> A.Compose:
    """Resize to ``image_size`` and normalise: the same framing as training, no randomness."""
    return A.Compose([
        A.Resize(image_size, image_size),
        A.Normalize(mean=MEAN, std=STD),
        ToTensorV2(),
    ])
