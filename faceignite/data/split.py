"""A stratified, seeded train/validation split over identities."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def stratified_split(labels: Sequence[int], valid_fraction: float, seed: int = 0
                     ) -> tuple[list[int], list[int]]:
    """Split sample indices per class: ``round(n * valid_fraction)`` of each class go to validation.

    Every class keeps at least one training image; the result depends only on ``labels``,
    ``valid_fraction`` and ``seed``.  Returns sorted ``(train_indices, valid_indices)``.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_split must be in [0, 1), got {valid_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    valid: list[int] = []
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    for start, count in zip(starts, counts):
        members = order[start:start + count]
        n_valid = min(int(round(len(members) * valid_fraction)), len(members) - 1)
        if n_valid > 0:
            valid.extend(rng.permutation(members)[:n_valid].tolist())
    valid_set = set(valid)
    train = [i for i in range(len(labels)) if i not in valid_set]
    return train, sorted(valid)
