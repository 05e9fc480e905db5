"""Pack an identity-folder root into insightface's RecordIO layout.

    python -m faceignite.data.pack SRC DST      # DST/train.rec, DST/train.idx, DST/property
    python -m faceignite.data.pack LFW DST.bin --pairs PAIRS   # a verification .bin (insightface)

Layout written (the one insightface's ``MXFaceDataset`` and MXNet read): record 0 is a header
with label ``[N+1, N+1+K]``; keys ``1 … N`` are the images (IRHeader label = class index, image =
the source file's bytes unchanged, so decoding gives exactly the source pixels); keys
``N+1 … N+K`` are the identity records, label ``[first key, end key)`` of that identity's images.
``property`` is ``K,height,width`` (the first image's size).  Classes are the sorted sub-folder
names, as ``--dataroot SRC`` would number them.

Atomic: everything is written under temporary names in DST and renamed at the end, so an
interrupted run leaves no half-written ``train.rec`` (re-run it to start over).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import cv2
from tqdm import tqdm

from faceignite.data.index import scan_identity_folders
from faceignite.data.recordio import EXACT_FLOAT_LIMIT, IndexedRecordWriter, pack_payload
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
OUTPUTS = ("train.rec", "train.idx", "property")


def _image_size(path: str) -> tuple[int, int]:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FaceIgniteError(f"cannot decode {path}: the first image sets the property file's size")
    return image.shape[0], image.shape[1]


def pack_folder(src: str, dst: str, progress: bool = True) -> dict[str, int]:
    """Write ``dst/train.rec``, ``train.idx`` and ``property`` from the identity folders of
    ``src``; returns ``{"images": N, "identities": K, "bytes": size of train.rec}``."""
    index = scan_identity_folders(src)
    samples = index.samples()
    n, k = len(samples), len(index.classes)
    if k >= EXACT_FLOAT_LIMIT or n + k + 1 >= EXACT_FLOAT_LIMIT:
        raise FaceIgniteError(f"{src}: {n} images of {k} identities: the layout stores keys and "
                              "labels as float32, exact only below 2^24; split the data")
    os.makedirs(dst, exist_ok=True)
    if os.path.samefile(os.path.abspath(src), os.path.abspath(dst)):
        raise FaceIgniteError(f"DST {dst} is SRC: write the packed files to another folder")
    height, width = _image_size(samples[0][0])
    tmp = {name: os.path.join(dst, f".{name}.{os.getpid()}.tmp") for name in OUTPUTS}
    try:
        with IndexedRecordWriter(tmp["train.rec"], tmp["train.idx"]) as writer:
            writer.write(0, pack_payload([n + 1, n + 1 + k], b""))
            ranges: list[tuple[int, int]] = []
            key = 1
            bar = tqdm(total=n, unit="img", desc="pack", disable=not progress)
            for label, names in enumerate(index.files):
                first = key
                for name in names:
                    path = os.path.join(index.root, index.classes[label], name)
                    try:
                        with open(path, "rb") as f:
                            data = f.read()
                    except OSError as exc:
                        raise FaceIgniteError(f"cannot read {path}: {exc}") from exc
                    writer.write(key, pack_payload(label, data, id=key))
                    key += 1
                    bar.update()
                ranges.append((first, key))
            bar.close()
            for label, (first, end) in enumerate(ranges):
                writer.write(n + 1 + label, pack_payload([first, end], b"", id=n + 1 + label))
        with open(tmp["property"], "w", encoding="ascii") as f:
            f.write(f"{k},{height},{width}\n")
        for name in OUTPUTS:  # the index and property last: no .idx without its complete .rec
            os.replace(tmp[name], os.path.join(dst, name))
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    size = os.path.getsize(os.path.join(dst, "train.rec"))
    logger.info("packed %d images of %d identities from %s into %s (%.1f MB)", n, k, src, dst,
                size / 1e6)
    return {"images": n, "identities": k, "bytes": size}


def pack_bin(args: argparse.Namespace) -> int:
    """``SRC DST.bin [--pairs PAIRS]``: :func:`faceignite.lfw.bin_writer.write_bin`."""
    from faceignite.lfw.bin_writer import write_bin

    try:
        stats = write_bin(args.src, args.dst, args.pairs, getattr(args, "overwrite", False))
    except FaceIgniteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{stats['pairs']} pairs ({stats['same']} same) of {stats['images']} images -> "
          f"{args.dst} ({stats['bytes'] / 1e6:.1f} MB)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m faceignite.data.pack",
        description="Pack an identity-folder root (one sub-folder per identity) into "
                    "insightface's RecordIO layout: DST/train.rec, train.idx, property.")
    p.add_argument("src", metavar="SRC", help="identity-folder root (as for --dataroot)")
    p.add_argument("dst", metavar="DST", help="output folder (created if missing)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--pairs", metavar="PAIRS", default=None,
                   help="with a DST ending in .bin: write an insightface verification .bin of "
                        "SRC (an LFW-format folder) and this pairs file (default: pairs.txt in "
                        "SRC)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dst.lower().endswith(".bin"):  # a verification set, not a training set
        return pack_bin(args)
    if args.pairs is not None:
        print(f"error: --pairs {args.pairs}: only with a DST ending in .bin (a verification "
              f"set); {args.dst} would be a training set", file=sys.stderr)
        return 2
    try:
        stats = pack_folder(args.src, args.dst, progress=not args.no_progress)
    except FaceIgniteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{stats['images']} images of {stats['identities']} identities -> "
          f"{os.path.join(args.dst, 'train.rec')} ({stats['bytes'] / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
