"""MTCNN detection and the davidsandberg crop: which face, which box, which pixels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from faceignite.errors import FaceIgniteError

FACENET_PYTORCH = "facenet-pytorch==2.5.3"


@dataclass
class Face:
    """The chosen detection of one image, in source pixels."""

    box: np.ndarray      # x1, y1, x2, y2 (float)
    prob: float
    points: np.ndarray   # 5 x 2: left eye, right eye, nose, mouth left, mouth right
    n_faces: int
    index: int           # position among the detector's faces


# ----------------------------------------------------------------------------- the recipe
def choose_face(boxes: np.ndarray, width: int, height: int) -> int:
    """davidsandberg's rule: the index maximising box area - 2 x squared centre offset."""
    boxes = np.asarray(boxes, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    return int(np.argmax(area - 2.0 * (dx ** 2 + dy ** 2)))


def crop_box(box: Sequence[float], margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin / 2`` each side, clipped to the image, truncated to integers."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (int(max(x1 - margin / 2, 0)), int(max(y1 - margin / 2, 0)),
            int(min(x2 + margin / 2, width)), int(min(y2 + margin / 2, height)))


def center_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """A centred square of side ``fraction`` x the short side (LFW 250 px, 0.48: 65..185)."""
    side = max(1, int(min(width, height) * fraction))
    x1, y1 = (width - side) // 2, (height - side) // 2
    return x1, y1, x1 + side, y1 + side


def crop_and_resize(image: Image.Image, box: tuple[int, int, int, int], size: int) -> Image.Image:
    return image.crop(box).resize((size, size), Image.BILINEAR)


# ----------------------------------------------------------------------------- detector
def load_detector(device: str = "auto", min_face_size: int = 20,
                  thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709):
    """facenet-pytorch's MTCNN on ``device`` (imported here, so the rest of faceignite never needs it)."""
    import torch

    from faceignite.runtime import resolve_device

    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise FaceIgniteError(
            f"face alignment needs facenet-pytorch ({exc}): pip install {FACENET_PYTORCH} "
            f"(2.6+ pins torch<2.3; 2.5.3 ships its MTCNN weights and keeps your torch)") from None
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise FaceIgniteError(f"--device {device}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FaceIgniteError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                 keep_all=True, device=dev).eval()


def _faces(boxes, probs, points, width: int, height: int) -> Face | None:
    if boxes is None or len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    k = choose_face(boxes, width, height)
    return Face(boxes[k], float(probs[k]), points[k], len(boxes), k)


def detect_faces(detector, images: list[Image.Image], min_face_size: int = 20) -> list[Face | None]:
    """The chosen face of each image (``None``: no face); equal-size images go in one batch.

    A failure raises from here: the caller (``folder._align_batch``) retries image by image.
    """
    width, height = images[0].size
    if min(width, height) < min_face_size:   # MTCNN builds no pyramid level for these
        return [None] * len(images)
    if len(images) > 1 and all(im.size == (width, height) for im in images):
        batch = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
        boxes, probs, points = detector.detect(batch, landmarks=True)
        return [_faces(b, p, q, width, height) for b, p, q in zip(boxes, probs, points)]
    out = []
    for im in images:
        if min(im.size) < min_face_size:
            out.append(None)
            continue
        boxes, probs, points = detector.detect(im, landmarks=True)
        out.append(_faces(boxes, probs, points, *im.size))
    return out
