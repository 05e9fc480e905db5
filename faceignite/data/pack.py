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
interrupted run leaves no half-written ``train.rec``; the next pack into DST removes a killed
pack's temporary files.  A packed set already in DST is replaced only with ``--overwrite``.
Empty or unreadable image files are skipped, each named in a warning, and counted.
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
from faceignite.output_files import make_output_folder, write_error

logger = logging.getLogger("faceignite")
OUTPUTS = ("train.rec", "train.idx", "property")


def _image_size(paths: list[str]) -> tuple[int, int]:
    """``(height, width)`` of the first of ``paths`` that decodes (the ``property`` file's)."""
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is not None:
            return image.shape[0], image.shape[1]
    raise FaceIgniteError(f"none of the {len(paths)} images decodes: nothing to pack")


def _leftovers(dst: str) -> list[str]:
    """Temporary files of an earlier pack into ``dst`` that was killed (its pid is gone)."""
    found = []
    for name in os.listdir(dst):
        parts = name.split(".")  # .train.rec.<pid>.tmp
        if (len(parts) >= 4 and name.startswith(".") and parts[-1] == "tmp"
                and ".".join(parts[1:-2]) in OUTPUTS and parts[-2].isdigit()):
            try:
                os.kill(int(parts[-2]), 0)
                continue  # a pack still running
            except ProcessLookupError:
                found.append(os.path.join(dst, name))
            except PermissionError:
                continue
    return found


def _prepare_destination(src: str, dst: str, overwrite: bool) -> None:
    """Make ``dst``; refuse it when it is ``src``, a file, not writable, or already holds a
    packed set (unless ``overwrite``); remove a killed pack's temporary files."""
    make_output_folder(dst, "DST")
    if os.path.samefile(os.path.abspath(src), os.path.abspath(dst)):
        raise FaceIgniteError(f"DST {dst} is SRC: write the packed files to another folder")
    existing = [n for n in OUTPUTS if os.path.exists(os.path.join(dst, n))]
    if existing and not overwrite:
        raise FaceIgniteError(f"DST {dst} already holds {', '.join(existing)}: pass --overwrite "
                              "to replace them, or choose another folder")
    for path in _leftovers(dst):
        os.remove(path)
        logger.info("removed %s, left by an interrupted pack", path)
    if not os.access(dst, os.W_OK):
        raise FaceIgniteError(f"cannot write {dst} (DST): permission denied")


def _packable(samples: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], int]:
    """The samples whose file is non-empty and readable; the others are skipped (each named in
    a warning) and counted."""
    kept, skipped = [], 0
    for path, label in samples:
        try:
            empty = os.path.getsize(path) == 0
            readable = os.access(path, os.R_OK)
        except OSError as exc:
            empty, readable = False, False
            logger.warning("skipped %s: %s", path, exc.strerror or exc)
        if empty or not readable:
            if empty or os.path.exists(path):
                logger.warning("skipped %s: %s", path, "empty file" if empty
                               else "permission denied")
            skipped += 1
            continue
        kept.append((path, label))
    return kept, skipped


def pack_folder(src: str, dst: str, progress: bool = True,
                overwrite: bool = False) -> dict[str, int]:
    """Write ``dst/train.rec``, ``train.idx`` and ``property`` from the identity folders of
    ``src``; returns ``{"images": N, "identities": K, "bytes": size of train.rec, "skipped":
    empty or unreadable files (each named in a warning)}``.  A packed set already in ``dst`` is
    replaced only with ``overwrite``; a killed pack's temporary files there are removed."""
    index = scan_identity_folders(src)
    samples, skipped = _packable(index.samples())
    labels = sorted({label for _, label in samples})
    renumber = {old: new for new, old in enumerate(labels)}  # identities left without images
    n, k = len(samples), len(labels)
    if not n:
        raise FaceIgniteError(f"{src}: no image to pack ({skipped} empty or unreadable)")
    if k >= EXACT_FLOAT_LIMIT or n + k + 1 >= EXACT_FLOAT_LIMIT:
        raise FaceIgniteError(f"{src}: {n} images of {k} identities: the layout stores keys and "
                              "labels as float32, exact only below 2^24; split the data")
    _prepare_destination(src, dst, overwrite)
    height, width = _image_size([p for p, _ in samples])
    tmp = {name: os.path.join(dst, f".{name}.{os.getpid()}.tmp") for name in OUTPUTS}
    try:
        with IndexedRecordWriter(tmp["train.rec"], tmp["train.idx"]) as writer:
            writer.write(0, pack_payload([n + 1, n + 1 + k], b""))
            ranges: list[list[int]] = [[0, 0] for _ in range(k)]
            bar = tqdm(total=n, unit="img", desc="pack", disable=not progress)
            for key, (path, old) in enumerate(samples, start=1):
                label = renumber[old]
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as exc:
                    raise FaceIgniteError(f"cannot read {path}: {exc.strerror or exc}") from None
                writer.write(key, pack_payload(label, data, id=key))
                if not ranges[label][0]:
                    ranges[label][0] = key
                ranges[label][1] = key + 1
                bar.update()
            bar.close()
            for label, (first, end) in enumerate(ranges):
                writer.write(n + 1 + label, pack_payload([first, end], b"", id=n + 1 + label))
        with open(tmp["property"], "w", encoding="ascii") as f:
            f.write(f"{k},{height},{width}\n")
        for name in OUTPUTS:  # the index and property last: no .idx without its complete .rec
            os.replace(tmp[name], os.path.join(dst, name))
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, dst, "DST")) from None
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    size = os.path.getsize(os.path.join(dst, "train.rec"))
    return {"images": n, "identities": k, "bytes": size, "skipped": skipped}


def pack_bin(args: argparse.Namespace) -> int:
    """``SRC DST.bin [--pairs PAIRS]``: :func:`faceignite.verification.bin_writer.write_bin`."""
    from faceignite.verification.bin_writer import write_bin

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
    p.add_argument("--overwrite", action="store_true",
                   help="replace a packed set (train.rec, train.idx, property) already in DST")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dst.lower().endswith(".bin"):  # a verification set, not a training set
        return pack_bin(args)
    if args.pairs is not None:
        print(f"error: --pairs {args.pairs}: only with a DST ending in .bin (a verification "
              f"set); {args.dst} would be a training set", file=sys.stderr)
        return 2
    try:
        stats = pack_folder(args.src, args.dst, progress=not args.no_progress,
                            overwrite=args.overwrite)
    except FaceIgniteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skipped = f", {stats['skipped']} empty or unreadable skipped" if stats["skipped"] else ""
    print(f"packed {stats['images']} images of {stats['identities']} identities from "
          f"{args.src} -> {os.path.join(args.dst, 'train.rec')} ({stats['bytes'] / 1e6:.1f} MB"
          f"{skipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
