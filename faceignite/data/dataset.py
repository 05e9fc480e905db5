"""Image dataset decoded with OpenCV; undecodable files are skipped, counted and logged."""
from __future__ import annotations

import logging
import random
import zlib
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

logger = logging.getLogger(__name__)
cv2.setNumThreads(1)  # one decode thread per loader worker: workers give the parallelism


def read_rgb(path: str):
    """Decode ``path`` into an RGB uint8 array, or ``None`` when it cannot be decoded."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers, the same in every process."""
    return zlib.crc32(repr(parts).encode())


def seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations ``Compose`` for one sample: one pair of generators it shares.

    ``Compose.set_random_seed`` would give every transform its own identically seeded
    generators, so their draws coincide (a flip with p=0.5 and a jitter with p=0.5 always fire
    together) and seeding costs a dozen generators per image; one shared pair is drawn from in
    turn, so the transforms are independent, and seeding costs two.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    elif hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class FaceImageDataset(Dataset):
    """``(image tensor, label)`` for each ``(path, label)``; ``None`` when the file won't decode.

    Indexed by an int, or by ``(index, seed)`` as :class:`~faceignite.data.sampler.EpochSampler`
    yields: the seed makes the augmentation of each sample a pure function of (seed, epoch, index),
    so runs are reproducible and resumable whatever the number of loader workers.
    """

    def __init__(self, samples: Sequence[tuple[Any, int]], transform: Callable | None = None,
                 read: Callable[[Any], np.ndarray | None] = read_rgb):
        self.samples = list(samples)
        self.transform = transform
        self.read = read  # source -> RGB array: a file path by default, a record key for .rec
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = self.read(path)
        if image is None:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping undecodable image: %s",
                               getattr(self.read, "describe", str)(path))
            return None
        if self.transform is not None:
            if seed is not None:
                seed_transform(self.transform, seed)
            image = self.transform(image=image)["image"]
        return image, label


def collate_skip_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Collate the decodable samples; the third element counts the skipped ones."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = default_collate(good)
    return images, labels, skipped
