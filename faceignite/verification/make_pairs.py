"""An LFW-format verification set from your own identity folders (people kept out of training).

    python -m faceignite.verification.make_pairs HELD_OUT_ROOT pairs_set/ --folds 10 --per_fold 300
    python -m faceignite.evaluate --checkpoint runs/.../best.pt --lfw pairs_set/

Copies each identity folder of ``HELD_OUT_ROOT`` (VGGFace2 layout: ``identity/any_name.jpg``)
into LFW layout (``identity/identity_0001.jpg``) and writes ``pairs.txt``: per fold
``per_fold`` same-person pairs, then ``per_fold`` different-person pairs, each fold over its own
identities (as in LFW View 2), drawn from a seeded generator.  Train with ``--lfw pairs_set/``
to validate on these people every epoch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

import numpy as np

from faceignite.data.index import is_image
from faceignite.cli import exits_on_error
from faceignite.errors import FaceIgniteError
from faceignite.pairs_file import write_pairs

__all__ = ["copy_lfw_layout", "main", "make_pairs_set", "write_pairs"]


def copy_lfw_layout(source: str, dest: str, identities: Sequence[str]) -> dict[str, int]:
    """Copy ``source/<identity>/*`` images to ``dest/<identity>/<identity>_000i.<ext>`` (sorted);
    return the number of images of each identity."""
    counts = {}
    for name in identities:
        folder = os.path.join(source, name)
        if not os.path.isdir(folder):
            raise FaceIgniteError(f"identity folder not found: {folder}")
        files = sorted(f for f in os.listdir(folder) if is_image(f))
        os.makedirs(os.path.join(dest, name), exist_ok=True)
        for i, fname in enumerate(files, 1):
            ext = os.path.splitext(fname)[1].lower()
            shutil.copyfile(os.path.join(folder, fname), os.path.join(dest, name, f"{name}_{i:04d}{ext}"))
        counts[name] = len(files)
    return counts


def make_pairs_set(source: str, dest: str, identities: Sequence[str] | None = None,
                   folds: int = 10, per_fold: int = 300, seed: int = 0, force: bool = False) -> str:
    """Build an LFW-format pairs set of ``identities`` (default: every folder of ``source``) in
    ``dest``; return the path of its ``pairs.txt``.

    An existing ``dest/pairs.txt`` is refused (nothing is copied or written) unless ``force``."""
    if not os.path.isdir(source):
        raise FaceIgniteError(f"identity root not found: {source}")
    path = os.path.join(dest, "pairs.txt")
    if os.path.exists(path) and not force:
        raise FaceIgniteError(f"{path} exists: pass --force to replace it, or choose another dest")
    names = sorted(identities if identities is not None else
                   (d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))))
    if any(not name or name != name.strip() or any(c.isspace() for c in name) for name in names):
        raise FaceIgniteError(f"identity names with white space cannot go in a pairs file: {source}")
    counts = {n: c for n, c in copy_lfw_layout(source, dest, names).items() if c > 0}
    write_pairs(path, counts, np.random.default_rng(seed), folds, per_fold)
    return path


@exits_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 when done; bad input: one line on stderr and exit code 2."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source", help="identity folders (VGGFace2 layout) of people not trained on")
    p.add_argument("dest", help="output folder: LFW layout + pairs.txt")
    p.add_argument("--folds", type=int, default=10, help="folds (default: 10, as LFW)")
    p.add_argument("--per_fold", type=int, default=300,
                   help="same-person and different-person pairs per fold (default: 300, as LFW)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair draw (default: 0)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing DEST/pairs.txt (default: refuse)")
    args = p.parse_args(argv)
    path = make_pairs_set(args.source, args.dest, folds=args.folds, per_fold=args.per_fold,
                          seed=args.seed, force=args.force)
    print(f"wrote {path}: {args.folds} folds x {args.per_fold} same + {args.per_fold} different pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
