"""Aligning a folder: read ahead, detect in equal-size batches, crop, write; resumable."""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from faceignite.align.detect import (Face, center_box, crop_and_resize, crop_box, detect_faces,
                                     load_detector)
from faceignite.align.five_point import (similarity_transform, template_points,
                                         transform_points)
from faceignite.align.files import (FAILED_FILE, NO_FACE_FILE, LandmarkWriter, landmark_row,
                                    load_image, output_name, read_list, save_image, write_lines)
from faceignite.data.crop_mark import write_template_mark
from faceignite.data.index import IMAGE_EXTENSIONS, list_images
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite.align")

TEMPLATES = ("box", "arcface")  # box-and-margin crop (davidsandberg), five-point ArcFace warp
CHUNK_PIXELS = 1 << 25   # ~100 MB of decoded RGB per chunk of files read ahead
BATCH_PIXELS = 1 << 24   # pixels per detection batch (~0.6 GB of MTCNN activations)


@dataclass
class Summary:
    """What one run did; ``no_face`` and ``failed`` hold SRC-relative paths."""

    aligned: int = 0
    skipped: int = 0
    no_face: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (f"aligned {self.aligned} | no face {len(self.no_face)} | failed {len(self.failed)} "
                f"| skipped (existing) {self.skipped}")


def _check_folders(src: str, dst: str) -> tuple[str, str]:
    src, dst = os.path.abspath(os.path.expanduser(src)), os.path.abspath(os.path.expanduser(dst))
    if not os.path.isdir(src):
        raise FaceIgniteError(f"source folder not found: {src}")
    if dst == src:
        raise FaceIgniteError(f"DST must differ from SRC ({src}): aligned crops would replace the photos")
    if os.path.isfile(dst):
        raise FaceIgniteError(f"DST is a file, not a folder: {dst}")
    return src, dst


def _check_collisions(files: list[str], ext: str) -> None:
    """Two sources must not write one crop (``a.jpg`` and ``a.png`` with ``--ext jpg``)."""
    seen: dict[str, str] = {}
    for rel in files:
        out = output_name(rel, ext)
        if out in seen:
            raise FaceIgniteError(f"{seen[out]} and {rel} would both be written to "
                                  f"{output_name(rel, ext)}: use --ext keep or rename one")
        seen[out] = rel


def _load_ahead(pool: ThreadPoolExecutor, src: str, todo: list[str],
                max_files: int) -> Iterator[list[tuple[str, Image.Image | str]]]:
    """Decoded chunks of ``todo`` in order; the next chunk decodes in ``pool`` meanwhile.

    A chunk holds at most ``max_files`` files and about ``CHUNK_PIXELS`` pixels (sized from the
    previous chunk), so folders of large photos stay within memory.
    """
    def submit(rels: list[str]) -> list[tuple[str, Future]]:
        return [(r, pool.submit(load_image, os.path.join(src, r))) for r in rels]

    start, size = 0, min(max_files, 8)
    ahead = submit(todo[:size])
    while ahead:
        loaded = [(r, f.result()) for r, f in ahead]
        start += len(ahead)
        pixels = [im.width * im.height for _, im in loaded if not isinstance(im, str)]
        mean = sum(pixels) / len(pixels) if pixels else 1.0
        size = max(1, min(max_files, int(CHUNK_PIXELS / max(mean, 1.0))))
        ahead = submit(todo[start:start + size])
        yield loaded


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def five_point_crop(image: Image.Image, points: np.ndarray, image_size: int
                    ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``image`` warped so its five landmarks land on the ArcFace template of an ``image_size``
    square, and the bounding box (source pixels, clipped) of the region the crop shows."""
    matrix = similarity_transform(points, template_points(image_size))
    warped = cv2.warpAffine(np.asarray(image), matrix, (image_size, image_size),
                            flags=cv2.INTER_LINEAR, borderValue=0.0)
    inverse = cv2.invertAffineTransform(matrix)
    corners = transform_points(inverse, [[0, 0], [image_size, 0], [0, image_size],
                                         [image_size, image_size]])
    width, height = image.size
    x1, y1 = np.clip(corners.min(axis=0), 0, [width, height]).astype(int)
    x2, y2 = np.clip(corners.max(axis=0), 0, [width, height]).astype(int)
    return Image.fromarray(warped), (int(x1), int(y1), int(x2), int(y2))


def align_folder(src: str, dst: str, *, image_size: int = 160, margin: int = 32,
                 batch_size: int = 32, device: str = "auto", no_face: str = "skip",
                 center_fraction: float = 0.48, ext: str = "jpg", landmarks: str | None = None,
                 min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, num_workers: int = 2, progress: bool = True,
                 template: str = "box") -> Summary:
    """Align every JPEG/PNG under ``src`` into ``dst`` (same relative paths); see the module doc.

    ``template``: ``box`` (the MTCNN box grown by ``margin``, resized) or ``arcface`` (warped by
    the five landmarks onto the ArcFace template scaled to ``image_size``; ``margin`` unused)."""
    from tqdm.auto import tqdm

    src, dst = _check_folders(src, dst)
    if template not in TEMPLATES:
        raise FaceIgniteError(f"--template must be one of {'|'.join(TEMPLATES)}, got {template!r}")
    if no_face not in ("skip", "center") or ext not in ("jpg", "png", "keep"):
        raise FaceIgniteError(f"no_face must be skip|center and ext jpg|png|keep (got {no_face}, {ext})")
    if image_size < 1 or margin < 0 or batch_size < 1:
        raise FaceIgniteError(f"need --image_size >= 1, --margin >= 0, --batch_size >= 1 "
                              f"(got {image_size}, {margin}, {batch_size})")
    files = list_images(src, exclude=dst)
    if not files:
        raise FaceIgniteError(f"no {'/'.join(IMAGE_EXTENSIONS)} files under {src}")
    _check_collisions(files, ext)
    summary = Summary()
    listed = read_list(os.path.join(dst, NO_FACE_FILE))
    listed_set = set(listed)
    todo = []
    for rel in files:
        done = os.path.isfile(os.path.join(dst, output_name(rel, ext)))
        if done or (no_face == "skip" and rel in listed_set):
            summary.skipped += 1
        else:
            todo.append(rel)
    logger.info("%d images under %s: %d to align, %d already done", len(files), src, len(todo),
                summary.skipped)
    os.makedirs(dst, exist_ok=True)
    write_template_mark(dst, template, image_size)  # training picks --augment from it
    detector = load_detector(device, min_face_size, thresholds, factor) if todo else None
    marks = LandmarkWriter(landmarks)
    new_no_face: list[str] = []

    def finish(rel: str, image: Image.Image, face: Face | None) -> None:
        width, height = image.size
        if face is None:
            new_no_face.append(rel)
            if no_face == "skip":
                return
            box = center_box(width, height, center_fraction)
            crop = crop_and_resize(image, box, image_size)
        elif template == "arcface":
            crop, box = five_point_crop(image, face.points, image_size)
        else:
            box = crop_box(face.box, margin, width, height)
            crop = crop_and_resize(image, box, image_size)
        out = output_name(rel, ext)
        try:
            save_image(crop, os.path.join(dst, out))
        except OSError as exc:   # disk full, permissions: stop, keeping what is written
            raise FaceIgniteError(f"cannot write {os.path.join(dst, out)}: {exc}") from None
        marks.write(landmark_row(out, face, box))
        if face is not None:
            summary.aligned += 1

    bar = tqdm(total=len(todo), unit="img", desc="align", disable=not progress or not todo)
    try:
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for loaded in _load_ahead(pool, src, todo, batch_size * 8):
                groups: dict[tuple[int, int], list[tuple[str, Image.Image]]] = {}
                for rel, image in loaded:
                    if isinstance(image, str):
                        summary.failed.append((rel, image))
                        bar.update(1)
                    else:
                        groups.setdefault(image.size, []).append((rel, image))
                for (width, height), group in groups.items():
                    per_batch = max(1, min(batch_size, BATCH_PIXELS // (width * height)))
                    for batch in _chunks(group, per_batch):
                        _align_batch(detector, batch, finish, summary, min_face_size)
                        bar.update(len(batch))
    finally:
        bar.close()
        marks.close()
        summary.no_face = new_no_face
        present = set(files)
        keep = [r for r in listed if r in present] + new_no_face
        if keep:
            write_lines(os.path.join(dst, NO_FACE_FILE), sorted(set(keep)))
        failed_path = os.path.join(dst, FAILED_FILE)
        if summary.failed:
            write_lines(failed_path, (f"{r}\t{why}" for r, why in summary.failed))
        elif os.path.isfile(failed_path):
            os.remove(failed_path)
    return summary


def _align_batch(detector, batch: list[tuple[str, Image.Image]], finish, summary: Summary,
                 min_face_size: int) -> None:
    """Detect one equal-size batch and write its crops; a failing image is recorded, never raised."""
    images = [im for _, im in batch]
    try:
        faces = detect_faces(detector, images, min_face_size)
    except Exception as exc:  # noqa: BLE001 - one odd image must not sink the batch
        logger.warning("batch detection failed (%s); detecting one by one", exc)
        faces = None
    for j, (rel, image) in enumerate(batch):
        try:
            face = faces[j] if faces is not None else detect_faces(detector, [image], min_face_size)[0]
            finish(rel, image, face)
        except FaceIgniteError:
            raise
        except Exception as exc:  # noqa: BLE001
            summary.failed.append((rel, f"{type(exc).__name__}: {exc}".splitlines()[0]))
