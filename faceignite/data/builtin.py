"""The built-in default dataset: synthetic 'faces' generated deterministically at start.

Each identity is a set of drawing parameters (face shape, skin and hair colour, eye, brow, nose
and mouth geometry); each image of it varies pose, scale, lighting and noise.  Training
identities and pairs-set identities are disjoint, so the pairs set measures what real LFW
measures: verification of people never seen in training.  Images are real JPEG files on disk.
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from faceignite.pairs_file import write_pairs

logger = logging.getLogger(__name__)
BUILTIN_VERSION = 2  # 2: pairs.txt drawn without replacement (v1 repeated 80 of 600 pairs)
SIZE = 64


def _identity(rng: np.random.Generator) -> dict:
    return {
        "skin": rng.uniform(60, 230, 3), "hair": rng.uniform(0, 200, 3),
        "face_w": rng.uniform(0.26, 0.36),
        "face_h": rng.uniform(0.34, 0.44), "eye_dx": rng.uniform(0.09, 0.16),
        "eye_y": rng.uniform(-0.1, 0.02), "eye_r": rng.uniform(0.025, 0.055),
        "eye_col": rng.uniform(0, 160, 3), "brow_tilt": rng.uniform(-0.06, 0.06),
        "nose_len": rng.uniform(0.05, 0.14), "mouth_w": rng.uniform(0.06, 0.16),
        "mouth_y": rng.uniform(0.16, 0.26), "smile": rng.uniform(-0.04, 0.06),
        "hair_h": rng.uniform(0.05, 0.25), "mouth_col": rng.uniform(40, 220, 3),
    }


def _draw(p: dict, rng: np.random.Generator) -> np.ndarray:
    s = SIZE
    img = np.empty((s, s, 3), np.float32)
    img[:] = rng.uniform(0, 255, 3)  # background varies per image, not per identity
    cx = s / 2 + rng.normal(0, 2.0)
    cy = s / 2 + rng.normal(0, 2.0)
    k = s * rng.uniform(0.92, 1.08)

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * k)), int(round(cy + y * k))

    fw, fh = int(p["face_w"] * k), int(p["face_h"] * k)
    cv2.ellipse(img, pt(0, -p["face_h"] * 0.55), (fw + 2, int(p["hair_h"] * k) + fh // 2), 0, 180,
                360, p["hair"].tolist(), -1)
    cv2.ellipse(img, pt(0, 0), (fw, fh), 0, 0, 360, p["skin"].tolist(), -1)
    er = max(1, int(p["eye_r"] * k))
    for side in (-1, 1):
        ex, ey = side * p["eye_dx"], p["eye_y"]
        cv2.circle(img, pt(ex, ey), er, p["eye_col"].tolist(), -1)
        cv2.line(img, pt(ex - 0.05, ey - 0.07 + side * p["brow_tilt"]),
                 pt(ex + 0.05, ey - 0.07 - side * p["brow_tilt"]), p["hair"].tolist(), 2)
    cv2.line(img, pt(0, p["eye_y"] + 0.03), pt(0, p["eye_y"] + 0.03 + p["nose_len"]),
             (p["skin"] * 0.6).tolist(), 2)
    my = p["mouth_y"]
    cv2.line(img, pt(-p["mouth_w"], my - p["smile"]), pt(0, my), p["mouth_col"].tolist(), 2)
    cv2.line(img, pt(0, my), pt(p["mouth_w"], my - p["smile"]), p["mouth_col"].tolist(), 2)
    angle = rng.normal(0, 6)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    img = img * rng.uniform(0.75, 1.25) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_identities(root: str, names: list[str], images_each: int, rng: np.random.Generator,
                      lfw_style: bool) -> None:
    for name in names:
        params = _identity(rng)
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for j in range(1, images_each + 1):
            fname = f"{name}_{j:04d}.jpg" if lfw_style else f"{j:04d}.jpg"
            cv2.imwrite(os.path.join(root, name, fname), _draw(params, rng)[:, :, ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 92])


def ensure_builtin_dataset(cache_dir: str, num_identities: int = 24, images_each: int = 30,
                           pair_identities: int = 40, pair_images_each: int = 6) -> tuple[str, str]:
    """Generate (once) the built-in data under ``cache_dir``; return ``(train_root, pairs_root)``.

    ``pairs_root`` holds LFW-style ``Name/Name_000i.jpg`` folders and a ``pairs.txt``.
    """
    base = os.path.join(cache_dir, f"builtin-v{BUILTIN_VERSION}")
    train_root, pairs_root = os.path.join(base, "train"), os.path.join(base, "pairs")
    marker = os.path.join(base, "COMPLETE")
    if not os.path.exists(marker):
        rng = np.random.default_rng(20161008)
        _write_identities(train_root, [f"id{i:03d}" for i in range(num_identities)], images_each,
                          rng, lfw_style=False)
        names = [f"Synthetic_Person{i:03d}" for i in range(pair_identities)]
        _write_identities(pairs_root, names, pair_images_each, rng, lfw_style=True)
        write_pairs(os.path.join(pairs_root, "pairs.txt"), dict.fromkeys(names, pair_images_each),
                    rng, folds=10, per_fold=30)
        with open(marker, "w") as f:
            f.write("ok\n")
    logger.info("no --dataroot/--lfw given: using the built-in synthetic dataset in %s "
                "(%d training identities x %d images at %d px, pairs set of %d other identities)",
                base, num_identities, images_each, SIZE, pair_identities)
    return train_root, pairs_root
