"""Five-point 112×112 crops of the shared 160 px sets from their landmark CSVs (no re-detection).

The shared ``aligned-160`` / ``lfw-mtcnn-160`` crops were made by MTCNN on the original photos;
their CSVs keep the five landmarks and the crop box in original-photo pixels.  Mapping the
landmarks into the 160 px crop and warping with :func:`faceignite.align.five_point_crop` gives the
crops ``python -m faceignite.align SRC DST --template arcface`` makes from the same 160 px folder
(which re-detects the landmarks on the crop: ~0.15 CPU-s per image), in seconds.  Rows without
landmarks get the centre crop of the whole image (the tool's ``--no_face center
--center_fraction 1``).  ``--compare DIR`` reports how far DIR's crops (made by the tool) are.

    python bench/five_point_crops.py --set lfw --out /tmp/lfw-fp112
    python bench/five_point_crops.py --set celeba --out /tmp/celeba-fp112
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np
from PIL import Image

from common import SHARED_DATA as DATA

from faceignite.align import five_point_crop  # noqa: E402
from faceignite.align.files import save_image  # noqa: E402

SETS = {"lfw": (DATA / "lfw" / "lfw-mtcnn-160", DATA / "lfw" / "lfw-mtcnn-160" / "landmarks.csv"),
        "celeba": (DATA / "celeba_subset" / "aligned-160",
                   DATA / "celeba_subset" / "aligned-160_landmarks.csv")}
POINTS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def crop_landmarks(row: dict, size: tuple[int, int]) -> np.ndarray | None:
    """The five landmarks of ``row`` in pixels of the crop (``size``: its width, height)."""
    try:
        points = np.array([[float(row[f"{p}_x"]), float(row[f"{p}_y"])] for p in POINTS])
        x1, y1, x2, y2 = (float(row[k]) for k in ("crop_x1", "crop_y1", "crop_x2", "crop_y2"))
    except (KeyError, ValueError):
        return None
    scale = np.array([size[0] / (x2 - x1), size[1] / (y2 - y1)])
    return (points - [x1, y1]) * scale


def main() -> None:
    from faceignite.data.crop_mark import write_template_mark

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--set", choices=tuple(SETS), required=True)
    p.add_argument("--out", required=True, help="output folder (outside the repository)")
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--compare", default=None,
                   help="a folder of crops made by python -m faceignite.align --template arcface "
                        "from the same set: report the mean absolute pixel difference")
    args = p.parse_args()
    root, table = SETS[args.set]
    with open(table, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    started, fallback, written, diffs = time.perf_counter(), 0, 0, []
    for rel, row in sorted(rows.items()):
        src = root / rel
        if not src.is_file():
            continue
        image = Image.open(src).convert("RGB")
        points = crop_landmarks(row, image.size)
        if points is None:
            fallback += 1
            crop = image.resize((args.image_size, args.image_size), Image.BILINEAR)
        else:
            crop, _ = five_point_crop(image, points, args.image_size)
        save_image(crop, os.path.join(args.out, rel))
        written += 1
        other = os.path.join(args.compare, rel) if args.compare else None
        if other and os.path.isfile(other):
            diffs.append(np.abs(np.asarray(crop, np.float32)
                                - np.asarray(Image.open(other).convert("RGB"), np.float32)).mean())
    write_template_mark(args.out, "arcface", args.image_size)  # training: --augment flip
    print(f"{args.set}: {written} crops ({fallback} without landmarks: centre crop) in "
          f"{time.perf_counter() - started:.0f} s -> {args.out}")
    if diffs:
        print(f"vs {args.compare}: {len(diffs)} crops, mean |difference| {np.mean(diffs):.1f} "
              f"grey levels (median {np.median(diffs):.1f}, max {np.max(diffs):.1f})")


if __name__ == "__main__":
    sys.exit(main())
