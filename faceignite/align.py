"""Face alignment: ``python -m faceignite.align SRC DST`` turns raw photos into aligned face crops.

The recipe is davidsandberg/facenet's ``align_dataset_mtcnn.py`` on facenet-pytorch's MTCNN, the
one that made ``lfw-mtcnn-160`` and the CelebA ``aligned-160`` sets, so training and test crops match:

* MTCNN (facenet-pytorch 2.5.3 weights), min face 20 px, thresholds 0.6/0.7/0.7, factor 0.709;
* several faces: the one maximising box area - 2 x squared offset of its centre from the image centre;
* box grown by ``margin / 2`` pixels each side, clipped to the image, int-truncated, not squared;
* resized to ``image_size`` with Pillow BILINEAR, JPEG quality 92.

Equal-size images are detected in batches (on CUDA when available).  Outputs keep SRC's relative
paths; files already in DST are skipped, so an interrupted run resumes.  Images without a face are
listed in ``DST/no_face.txt`` (``--no_face skip``) or centre-cropped and listed (``--no_face center``);
files that do not decode are listed in ``DST/failed.txt``.  ``--landmarks FILE.csv`` writes the box,
probability and 5 landmarks of every aligned image, in source-image pixels.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from faceignite.data.index import IMAGE_EXTENSIONS
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite.align")

FACENET_PYTORCH = "facenet-pytorch==2.5.3"
NO_FACE_FILE = "no_face.txt"
FAILED_FILE = "failed.txt"
LANDMARK_COLUMNS = [
    "path", "n_faces", "face_index", "prob", "x1", "y1", "x2", "y2",
    "left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y",
    "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y",
    "crop_x1", "crop_y1", "crop_x2", "crop_y2", "fallback",
]
CHUNK_PIXELS = 1 << 25   # ~100 MB of decoded RGB per chunk of files read ahead
BATCH_PIXELS = 1 << 24   # pixels per detection batch (~0.6 GB of MTCNN activations)
SAVE_OPTIONS = {"JPEG": {"quality": 92, "optimize": True}, "PNG": {}}


@dataclass
class Face:
    """The chosen detection of one image, in source pixels."""

    box: np.ndarray      # x1, y1, x2, y2 (float)
    prob: float
    points: np.ndarray   # 5 x 2: left eye, right eye, nose, mouth left, mouth right
    n_faces: int
    index: int           # position among the detector's faces


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

    from faceignite.engine import resolve_device

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

    A batch that fails is retried image by image; an image that fails raises from here.
    """
    width, height = images[0].size
    if min(width, height) < min_face_size:   # MTCNN builds no pyramid level for these
        return [None] * len(images)
    if len(images) > 1 and all(im.size == (width, height) for im in images):
        try:
            batch = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
            boxes, probs, points = detector.detect(batch, landmarks=True)
            return [_faces(b, p, q, width, height) for b, p, q in zip(boxes, probs, points)]
        except Exception as exc:  # noqa: BLE001 - one odd image must not sink the batch
            logger.warning("batch detection failed (%s); detecting one by one", exc)
    out = []
    for im in images:
        if min(im.size) < min_face_size:
            out.append(None)
            continue
        boxes, probs, points = detector.detect(im, landmarks=True)
        out.append(_faces(boxes, probs, points, *im.size))
    return out


# ----------------------------------------------------------------------------- files
def list_images(src: str, exclude: str | None = None) -> list[str]:
    """SRC-relative paths of every JPEG/PNG at any depth (sorted; hidden names and ``exclude`` skipped)."""
    found = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.join(root, d) != exclude)
        found.extend(os.path.relpath(os.path.join(root, f), src) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return sorted(found)


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


# ----------------------------------------------------------------------------- the run
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


def align_folder(src: str, dst: str, *, image_size: int = 160, margin: int = 32,
                 batch_size: int = 32, device: str = "auto", no_face: str = "skip",
                 center_fraction: float = 0.48, ext: str = "jpg", landmarks: str | None = None,
                 min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, num_workers: int = 2, progress: bool = True) -> Summary:
    """Align every JPEG/PNG under ``src`` into ``dst`` (same relative paths); see the module doc."""
    from tqdm.auto import tqdm

    src, dst = _check_folders(src, dst)
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
        else:
            box = crop_box(face.box, margin, width, height)
        out = output_name(rel, ext)
        crop = crop_and_resize(image, box, image_size)
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
    except Exception:  # noqa: BLE001 - fall back to one by one to find the culprit
        faces = None
    for j, (rel, image) in enumerate(batch):
        try:
            face = faces[j] if faces is not None else detect_faces(detector, [image], min_face_size)[0]
            finish(rel, image, face)
        except FaceIgniteError:
            raise
        except Exception as exc:  # noqa: BLE001
            summary.failed.append((rel, f"{type(exc).__name__}: {exc}".splitlines()[0]))


# ----------------------------------------------------------------------------- command line
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m faceignite.align",
        description="Align faces with MTCNN (davidsandberg/facenet recipe): SRC holds raw photos "
                    "(identity sub-folders, JPEG/PNG at any depth); DST gets one crop per photo at "
                    "the same relative path. Re-running skips crops already in DST.")
    p.add_argument("src", metavar="SRC", help="Folder of raw photos")
    p.add_argument("dst", metavar="DST", help="Output folder for the aligned crops")
    p.add_argument("--image_size", type=int, default=160, help="Crop size in pixels (default: 160)")
    p.add_argument("--margin", type=int, default=32,
                   help="Pixels added around the MTCNN box, half on each side, in source pixels "
                        "(default: 32)")
    p.add_argument("--batch_size", type=int, default=32,
                   help="Equal-size images detected together (default: 32)")
    p.add_argument("--device", type=str, default="auto",
                   help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--no_face", choices=("skip", "center"), default="skip",
                   help="Photos with no face: 'skip' lists them in DST/no_face.txt and writes no "
                        "crop; 'center' writes a centre crop (see --center_fraction) and lists them "
                        "(default: skip)")
    p.add_argument("--center_fraction", type=float, default=0.48,
                   help="--no_face center: side of the centred square as a fraction of the short "
                        "side (default: 0.48, LFW's 120 of 250 px)")
    p.add_argument("--ext", choices=("jpg", "png", "keep"), default="jpg",
                   help="Output format: jpg (quality 92), png, or keep the source's extension "
                        "(default: jpg)")
    p.add_argument("--landmarks", type=str, default=None, metavar="FILE.csv",
                   help="Write box, probability, 5 landmarks and crop region of each crop "
                        "(source pixels) to this CSV")
    p.add_argument("--min_face_size", type=int, default=20, help="MTCNN min face size (default: 20)")
    p.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.7],
                   help="MTCNN P/R/O-net thresholds (default: 0.6 0.7 0.7)")
    p.add_argument("--factor", type=float, default=0.709, help="MTCNN pyramid factor (default: 0.709)")
    p.add_argument("--num_workers", type=int, default=2,
                   help="Threads decoding the next images during detection (default: 2)")
    p.add_argument("--no_progress", action="store_true", help="No progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 when done (even with no-face or failed files), 2 on bad input."""
    from faceignite.run import setup_logging

    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        summary = align_folder(
            args.src, args.dst, image_size=args.image_size, margin=args.margin,
            batch_size=args.batch_size, device=args.device, no_face=args.no_face,
            center_fraction=args.center_fraction, ext=args.ext, landmarks=args.landmarks,
            min_face_size=args.min_face_size, thresholds=args.thresholds, factor=args.factor,
            num_workers=args.num_workers, progress=not args.no_progress)
    except FaceIgniteError as exc:
        logger.error("error: %s", exc)
        return 2
    dst = os.path.abspath(args.dst)
    if summary.no_face:
        logger.info("no face (%s): listed in %s", "centre crop written" if args.no_face == "center"
                    else "no crop", os.path.join(dst, NO_FACE_FILE))
    if summary.failed:
        logger.info("failed: listed in %s", os.path.join(dst, FAILED_FILE))
    logger.info(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
