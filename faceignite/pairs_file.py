"""The LFW-format pairs-file writer, shared by ``make_pairs`` (your own identity folders) and the
built-in dataset (:mod:`faceignite.data.builtin`): it sits below both, importing neither."""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

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
