"""Class compactness of embeddings: mean intra-class over mean inter-class L2 distance.

The quantity center loss exists to lower (Wen et al., ECCV 2016): measured on identities the
network never trained on, a lower ratio means tighter identities relative to their spread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from faceignite.errors import FaceIgniteError


@dataclass(frozen=True)
class Compactness:
    """``intra``: mean over classes of the mean L2 distance between two images of the class;
    ``inter``: mean L2 distance over all pairs of images of different classes (embedding units);
    ``ratio``: intra / inter (dimensionless, lower = more compact)."""

    intra: float
    inter: float
    ratio: float
    num_classes: int
    num_images: int


def compactness(embeddings: np.ndarray | torch.Tensor, labels, normalize: bool = False,
                chunk: int = 2048) -> Compactness:
    """Compactness of ``embeddings`` (N x D) grouped by ``labels`` (N class ids of any type).

    Only classes with at least two images count (the others have no intra-class distance).
    ``normalize``: L2-normalise each row first (the verification embedding).  Distances are
    computed in row blocks of ``chunk`` (memory O(chunk x N)), in float64.
    """
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    labels = np.asarray(labels)
    if e.ndim != 2 or len(e) != len(labels):
        raise FaceIgniteError(f"compactness: expected N x D embeddings and N labels, got "
                              f"{tuple(e.shape)} and {labels.shape}")
    _, ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[ids] >= 2
    if len(np.unique(ids[keep])) < 2:
        raise FaceIgniteError("compactness: needs at least two classes with two images or more")
    e, ids = e[torch.from_numpy(keep)], torch.from_numpy(ids[keep])
    if normalize:
        e = torch.nn.functional.normalize(e, dim=1)
    num_classes = int(ids.max()) + 1
    intra_sum = torch.zeros(num_classes, dtype=torch.float64)
    inter_sum, inter_count = 0.0, 0
    for start in range(0, len(e), chunk):
        d = torch.cdist(e[start:start + chunk], e)  # rows of this block x all images
        same = ids[start:start + chunk, None] == ids[None, :]
        intra_sum.index_add_(0, ids[start:start + chunk], (d * same).sum(dim=1))
        inter_sum += float(d[~same].sum())
        inter_count += int((~same).sum())
    n = torch.bincount(ids, minlength=num_classes).double()
    present = n >= 2
    # each unordered pair was counted twice, the zero self-distance once: n(n-1) ordered pairs
    intra = float((intra_sum[present] / (n[present] * (n[present] - 1))).mean())
    inter = inter_sum / inter_count
    return Compactness(intra=intra, inter=inter, ratio=intra / inter,
                       num_classes=int(present.sum()), num_images=len(e))
