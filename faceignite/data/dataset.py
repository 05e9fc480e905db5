"""Image dataset decoded with OpenCV; missing, truncated and undecodable files are skipped,
counted and logged with their path and what is wrong."""
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


MISSING, TRUNCATED, UNDECODABLE = "missing", "truncated", "undecodable"
DENIED, UNREADABLE = "permission denied", "unreadable"
PROBLEMS = {MISSING: "missing (removed since the folder was indexed)",
            DENIED: "permission denied (the file cannot be read by this user)",
            UNREADABLE: "cannot be read (an I/O error)",
            TRUNCATED: "truncated (the file ends before the image does)",
            UNDECODABLE: "does not decode (not a JPEG/PNG image, or corrupt)"}
_JPEG_SOI, _JPEG_EOI, _JPEG_SOS = b"\xff\xd8", b"\xff\xd9", 0xDA
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first scan's data (after the SOS segment), or -1 when the file ends first.

    Walks the length-prefixed marker segments from the start of image (APPn, EXIF thumbnails,
    DQT, DHT, SOF ...), so an end-of-image marker inside an embedded thumbnail is skipped."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == _JPEG_SOS:
            return pos + 2 + length if pos + 2 + length <= n else -1
        pos += 2 + length
    return -1


def is_truncated(data: bytes) -> bool:
    """True for a JPEG without its end-of-image marker after the first scan, or a PNG without
    its ``IEND`` chunk: a file cut short (an interrupted copy or download).

    In a JPEG's entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker,
    so ``FF D9`` after the first scan is the end-of-image marker; data appended after it
    (camera trailers, motion photos) is allowed.  Other formats: False."""
    if data.startswith(_JPEG_SOI):
        start = _jpeg_scan_start(data)
        return start < 0 or data.find(_JPEG_EOI, start) < 0
    if data.startswith(_PNG_SIGNATURE):
        return data.find(_PNG_IEND, len(_PNG_SIGNATURE)) < 0
    return False


def read_rgb_checked(path: str) -> tuple[np.ndarray | None, str | None]:
    """``(RGB uint8 array, None)``, or ``(None, problem)`` with ``problem`` one of
    :data:`MISSING`, :data:`DENIED`, :data:`UNREADABLE`, :data:`TRUNCATED`, :data:`UNDECODABLE`.

    The file is read once; a truncated JPEG/PNG is refused before decoding (OpenCV would fill
    the missing part with grey and warn without naming the file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, MISSING
    except PermissionError:
        return None, DENIED
    except OSError:
        return None, UNREADABLE
    if is_truncated(data):
        return None, TRUNCATED
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        return None, UNDECODABLE
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None


def read_rgb(path: str):
    """Decode ``path`` into an RGB uint8 array, or ``None`` when it is missing, truncated or
    cannot be decoded (see :func:`read_rgb_checked` for which)."""
    return read_rgb_checked(path)[0]


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
    """``(image tensor, label)`` for each ``(path, label)``; ``None`` when the file is missing,
    truncated or won't decode (logged once per file, naming it and which).

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
        if self.read is read_rgb:  # files: say whether missing, truncated or undecodable
            image, problem = read_rgb_checked(path)
            where = path
        else:  # another source (e.g. a .rec record), described by its reader
            image, problem = self.read(path), UNDECODABLE
            where = getattr(self.read, "describe", str)(path)
        if image is None:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("skipping image %s: %s", where, PROBLEMS[problem])
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
