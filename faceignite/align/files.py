"""Files of an alignment run: listing SRC, reading and writing images, the no-face/failed
lists and the landmarks CSV.
"""
from __future__ import annotations

import csv
import os
from typing import Iterable

from PIL import Image, ImageOps

from faceignite.align.detect import Face

NO_FACE_FILE = "no_face.txt"
FAILED_FILE = "failed.txt"
LANDMARK_COLUMNS = [
    "path", "n_faces", "face_index", "prob", "x1", "y1", "x2", "y2",
    "left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y",
    "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y",
    "crop_x1", "crop_y1", "crop_x2", "crop_y2", "fallback",
]
SAVE_OPTIONS = {"JPEG": {"quality": 92, "optimize": True}, "PNG": {}}


def output_name(rel: str, ext: str) -> str:
    """``rel`` with the output extension (``keep``: the source's own)."""
    return rel if ext == "keep" else os.path.splitext(rel)[0] + "." + ext


def load_image(path: str) -> Image.Image | str:
    """The upright RGB image, or the reason it cannot be read."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


def save_image(image: Image.Image, path: str) -> None:
    """Write atomically (temp file + rename), so a killed run never leaves a half file behind."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    image.save(tmp, format=fmt, **SAVE_OPTIONS[fmt])
    os.replace(tmp, path)


def read_list(path: str) -> list[str]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]


def write_lines(path: str, lines: Iterable[str]) -> None:
    lines = list(lines)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def landmark_row(path: str, face: Face | None, crop: tuple[int, int, int, int]) -> dict:
    row = dict.fromkeys(LANDMARK_COLUMNS, "")
    row.update(path=path, crop_x1=crop[0], crop_y1=crop[1], crop_x2=crop[2], crop_y2=crop[3],
               fallback=int(face is None), n_faces=0)
    if face is not None:
        row.update(n_faces=face.n_faces, face_index=face.index, prob=f"{face.prob:.4f}")
        row.update(zip(LANDMARK_COLUMNS[4:8], (f"{v:.2f}" for v in face.box)))
        row.update(zip(LANDMARK_COLUMNS[8:18], (f"{v:.2f}" for v in face.points.reshape(-1))))
    return row


class LandmarkWriter:
    """Appends one CSV row per crop as it is written (a killed run keeps its rows); ``close`` then
    rewrites the file with one row per path, sorted, so resumed runs leave a clean file."""

    def __init__(self, path: str | None):
        self.path = path
        self.file = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fresh = not os.path.isfile(path) or os.path.getsize(path) == 0
            self.file = open(path, "a", encoding="utf-8", newline="")
            self.writer = csv.DictWriter(self.file, LANDMARK_COLUMNS)
            if fresh:
                self.writer.writeheader()

    def write(self, row: dict) -> None:
        if self.file:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if not self.file:
            return
        self.file.close()
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = {r["path"]: r for r in csv.DictReader(f)}
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, LANDMARK_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))
        os.replace(tmp, self.path)
