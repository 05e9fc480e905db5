"""Write an insightface verification ``.bin`` from an LFW-format folder and a pairs file: the
writer that completes :mod:`faceignite.verification.bin_set`'s reader.

    python -m faceignite.data.pack lfw-fp112 lfw.bin --pairs lfw-fp112/pairs.txt

The file is what insightface's ``verification.load_bin`` and :func:`~faceignite.verification.bin_set.
load_bin` read: a pickle of ``(images, issame)``, ``images`` the ``2 × P`` encoded image files'
bytes unchanged (JPEG/PNG: decoding gives exactly the source pixels) in pair order, ``issame``
one ``bool`` per pair; no other object, so no global in the pickle.  Pairs are written fold by
fold in the pairs file's order, so that a ``.bin``'s folds (10 consecutive blocks) are the pairs
file's own when its folds are of equal size (LFW's 10 × 600).  Written to a temporary file and
renamed: an interrupted run leaves no half-written ``.bin``.
"""
from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np

from faceignite.data.decode import decode_rgb
from faceignite.errors import FaceIgniteError
from faceignite.verification.pairs import find_pairs_file, read_pairs, resolve_images
from faceignite.output_files import write_error


def write_bin(src: str, dst: str, pairs_file: str | None = None, overwrite: bool = False
              ) -> dict[str, int]:
    """Write ``dst`` (a ``.bin``) from the LFW-format folder ``src`` and its pairs file
    (``pairs_file``, default ``pairs.txt``/``lfw_pairs.txt`` inside ``src``).  Every image must
    exist and decode (a verification set with a pair dropped is not its published protocol):
    else one line naming the pair's image.  Returns ``{"pairs", "same", "images", "bytes"}``."""
    if not dst.lower().endswith(".bin"):
        raise FaceIgniteError(f"DST {dst}: a verification set is written to a file ending in .bin")
    if os.path.isdir(dst):
        raise FaceIgniteError(f"DST {dst} is a folder: give a file name ending in .bin")
    if os.path.exists(dst) and not overwrite:
        raise FaceIgniteError(f"DST {dst} exists: remove it or pass --overwrite")
    if not os.path.isdir(src):
        raise FaceIgniteError(f"SRC {src}: not a folder (an LFW-format folder: one sub-folder "
                              f"per person)")
    pairs = read_pairs(find_pairs_file(src, pairs_file))
    pairs, files = resolve_images(pairs, src, skip_missing=False)
    order = np.argsort(pairs.folds, kind="stable")  # fold by fold: the .bin's 10 blocks
    encoded: dict[int, bytes] = {}
    images: list[bytes] = []
    for p in order:
        for key in (int(pairs.left[p]), int(pairs.right[p])):
            if key not in encoded:
                path = files[key]
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as exc:
                    raise FaceIgniteError(f"cannot read {path} (pair {int(pairs.lines[p])} of "
                                          f"{pairs.path}): {exc.strerror or exc}") from None
                if decode_rgb(data) is None:
                    raise FaceIgniteError(f"{path} (pair {int(pairs.lines[p])} of {pairs.path}) "
                                          f"does not decode as an image")
                encoded[key] = data
            images.append(encoded[key])
    issame = [bool(pairs.issame[p]) for p in order]
    tmp = f"{dst}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            pickle.dump((images, issame), f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, dst, "DST")) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return {"pairs": len(issame), "same": int(sum(issame)), "images": len(encoded),
            "bytes": os.path.getsize(dst)}
