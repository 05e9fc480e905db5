"""An LFW-format verification set from your own identity folders (people kept out of training).

    python -m faceignite.lfw.make_pairs HELD_OUT_ROOT pairs_set/ --folds 10 --per_fold 300
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
from typing import Mapping, Sequence

import numpy as np

from faceignite.data.index import is_image
from faceignite.cli import exits_on_error
from faceignite.errors import FaceIgniteError


def _draw_distinct(draw, count: int, possible: int, what: str) -> list[str]:
    """``count`` lines of distinct pairs from ``draw()`` (``(pair in canonical order, line)``),
    redrawing repeats: without replacement, so a fold never holds one pair twice."""
    if possible < count:
        raise FaceIgniteError(f"a fold has only {possible} distinct {what} pairs, fewer than "
                              f"--per_fold {count}: use fewer --per_fold or --folds")
    seen: set[tuple] = set()
    pairs = []
    while len(pairs) < count:
        pair, line = draw()
        if pair not in seen:
            seen.add(pair)
            pairs.append(line)
    return pairs


def write_pairs(path: str, images_per_name: Mapping[str, int], rng: np.random.Generator,
                folds: int = 10, per_fold: int = 300) -> None:
    """Write an LFW-format pairs file over ``images_per_name`` (name → number of images, 1-based
    ``name_000i`` numbering); names are split into ``folds`` disjoint groups.

    Pairs are drawn without replacement: a fold never holds the same pair twice (in either
    order).  The file is written whole or not at all (a temporary file renamed)."""
    names = list(images_per_name)
    if len(names) < 2 * folds:
        raise FaceIgniteError(f"{len(names)} identities cannot fill {folds} folds: "
                              f"give at least {2 * folds} or fewer --folds")
    lines = [f"{folds}\t{per_fold}"]
    for group in np.array_split(np.array(names), folds):
        same = [n for n in group if images_per_name[n] >= 2]
        if not same:
            raise FaceIgniteError(f"a fold of {len(group)} identities has none with 2+ images "
                                  "for same-person pairs: use fewer --folds")

        def same_pair() -> tuple:
            name = rng.choice(same)
            i, j = rng.choice(np.arange(1, images_per_name[name] + 1), 2, replace=False)
            return (str(name), *sorted((int(i), int(j)))), f"{name}\t{i}\t{j}"

        def different_pair() -> tuple:
            a, b = rng.choice(group, 2, replace=False)
            left = (str(a), int(rng.integers(1, images_per_name[a] + 1)))
            right = (str(b), int(rng.integers(1, images_per_name[b] + 1)))
            return ((*left, *right) if left < right else (*right, *left),
                    f"{left[0]}\t{left[1]}\t{right[0]}\t{right[1]}")

        counts = [images_per_name[n] for n in group]
        possible_same = sum(n * (n - 1) // 2 for n in counts)
        possible_different = (sum(counts) ** 2 - sum(n * n for n in counts)) // 2
        lines += _draw_distinct(same_pair, per_fold, possible_same, "same-person")
        lines += _draw_distinct(different_pair, per_fold, possible_different, "different-person")
    tmp = f"{path}.part{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise FaceIgniteError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
