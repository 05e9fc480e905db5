"""Verification metrics under the standard LFW protocol (FaceNet / davidsandberg ``lfw.py``).

Per fold of the pairs file: the distance threshold that maximises accuracy on the other folds is
applied to the held-out fold (accuracy: mean ± std over folds); TAR (VAL) at a FAR target uses the
threshold with the highest TAR among those whose FAR on the other folds is at most the target.
ROC AUC and EER are over all pairs.  Thresholds are exact (every distinct distance, via scikit-learn's ``roc_curve``)
rather than a 0.01 grid; a chosen threshold sits half-way to the next distance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceignite.errors import FaceIgniteError
from faceignite.verification.pairs import Pairs

FAR_TARGETS = (1e-3, 1e-2)
DISTANCES = {
    "l2": "L2 (Euclidean) distance between L2-normalised embeddings",
    "cosine": "cosine distance (1 - cosine similarity) between L2-normalised embeddings",
}
PROTOCOL = ("10-fold cross-validation on the file's folds: the threshold that maximises accuracy "
            "on 9 folds is applied to the 10th; TAR at the threshold of highest TAR with "
            "FAR <= target on the 9 folds; AUC and EER over all pairs")


def far_label(far: float) -> str:
    """``0.001`` → ``1e-3`` (the spelling in metric names)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def pair_distances(embeddings: np.ndarray, left: np.ndarray, right: np.ndarray,
                   distance: str = "l2") -> np.ndarray:
    """Distance of each pair ``(left[p], right[p])`` of rows, after L2 normalisation."""
    if distance not in DISTANCES:
        raise FaceIgniteError(f"unknown distance {distance!r}: choose from {tuple(DISTANCES)}")
    e = l2_normalize(embeddings)
    a, b = e[left], e[right]
    if distance == "l2":
        return np.linalg.norm(a - b, axis=1)
    return 1.0 - np.einsum("ij,ij->i", a, b)


def _roc(distances: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, distance threshold) of "accept when distance <= threshold", every threshold."""
    from sklearn.metrics import roc_curve  # here, not at import: scikit-learn takes ~1 CPU-s

    fpr, tpr, scores = roc_curve(issame, -distances, drop_intermediate=False)
    return fpr, tpr, -scores


def _between(distances: np.ndarray, threshold: float) -> float:
    """Half-way from ``threshold`` to the next larger distance: same decisions, more margin."""
    if not np.isfinite(threshold):  # accept nothing
        return float(np.nextafter(distances.min(), -np.inf))
    larger = distances[distances > threshold]
    return float((threshold + larger.min()) / 2) if larger.size else float(threshold)


def best_threshold(distances: np.ndarray, issame: np.ndarray) -> float:
    """The threshold with the highest accuracy on these pairs (the smallest one on ties)."""
    fpr, tpr, thresholds = _roc(distances, issame)
    positives = int(issame.sum())
    correct = tpr * positives + (1 - fpr) * (len(issame) - positives)
    return _between(distances, thresholds[int(np.argmax(correct))])


def threshold_at_far(distances: np.ndarray, issame: np.ndarray, far: float) -> float:
    """The threshold with the highest TAR among those whose FAR on these pairs is at most
    ``far`` (the smallest such: no false accept that buys no true accept)."""
    fpr, tpr, thresholds = _roc(distances, issame)
    allowed = fpr <= far
    best = tpr[allowed].max()
    return _between(distances, thresholds[int(np.argmax(allowed & (tpr == best)))])


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where FAR equals FRR (1 - TAR), linearly interpolated on the ROC curve."""
    gap = (1 - tpr) - fpr  # falls from 1 to -1 along the curve
    k = int(np.argmax(gap <= 0))
    if k == 0:
        return float(fpr[0])
    w = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


@dataclass
class VerificationResult:
    """Everything one validation measured; :meth:`metrics` gives the named scalars."""

    distance: str
    accuracy: float
    accuracy_std: float
    threshold: float
    threshold_std: float
    val: dict[float, float | None]      # None: a FAR below min_far, which the pairs cannot resolve
    val_std: dict[float, float | None]
    far: dict[float, float | None]
    auc: float
    eer: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    num_pairs: int
    num_same: int
    num_folds: int
    num_images: int = 0
    pairs_file: str = ""
    skipped_pairs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    min_far: float = 0.0  # the smallest FAR the impostor pairs can resolve (1 / their count)

    def metrics(self, prefix: str = "lfw") -> dict[str, float | None]:
        """``lfw_accuracy``, ``lfw_accuracy_std``, ``lfw_threshold``, ``lfw_val_far1e-3``,
        ``lfw_val_far1e-2``, ``lfw_auc``, ``lfw_eer`` (as floats; a TAR at a FAR below
        :attr:`min_far` is None: null in ``metrics.json``, left out by the trackers, which
        take numbers only)."""
        out = {f"{prefix}_accuracy": self.accuracy, f"{prefix}_accuracy_std": self.accuracy_std,
               f"{prefix}_threshold": self.threshold}
        out.update({f"{prefix}_val_far{far_label(f)}": v for f, v in self.val.items()})
        out.update({f"{prefix}_auc": self.auc, f"{prefix}_eer": self.eer})
        return {k: None if v is None else float(v) for k, v in out.items()}

    def tar_text(self, far: float) -> str:
        """TAR at ``far`` as a number, or ``n/a (FAR >= <min_far>)`` when the impostor pairs
        cannot resolve it."""
        v = self.val[far]
        return f"{v:.4f}" if v is not None else f"n/a (FAR >= {self.min_far:.1e} resolvable)"

    def summary(self) -> str:
        """One line: accuracy ± std, threshold, TARs, AUC, EER."""
        vals = " | ".join(f"TAR@FAR={far_label(f)} {self.tar_text(f)}" for f in self.val)
        return (f"accuracy {self.accuracy:.4f} ± {self.accuracy_std:.4f} | threshold "
                f"{self.threshold:.4f} ({self.distance}) | {vals} | AUC {self.auc:.4f} | "
                f"EER {self.eer:.4f}")

    def num_impostors_text(self) -> str:
        return (f"the {round(1 / self.min_far)} impostor pairs of the 9 threshold folds"
                if self.min_far else "the impostor pairs")

    def table(self) -> str:
        """The metric table the stand-alone evaluation prints."""
        rows = [
            ("pairs", f"{self.pairs_file}: {self.num_pairs} pairs ({self.num_same} same, "
                      f"{self.num_pairs - self.num_same} different) in {self.num_folds} folds, "
                      f"{self.num_images} images"
                      + (f", {self.skipped_pairs} pairs skipped" if self.skipped_pairs else "")),
            ("distance", DISTANCES[self.distance]),
            ("protocol", PROTOCOL),
            ("accuracy", f"{100 * self.accuracy:.2f} % ± {100 * self.accuracy_std:.2f}"),
            ("threshold", f"{self.threshold:.4f} ± {self.threshold_std:.4f} (mean of the folds)"),
        ]
        rows += [(f"TAR @ FAR={far_label(f)}",
                  f"{100 * v:.2f} % ± {100 * self.val_std[f]:.2f} (FAR on test folds "
                  f"{100 * self.far[f]:.3f} %)" if v is not None else
                  f"n/a: {self.num_impostors_text()} resolve FAR >= {self.min_far:.1e} only")
                 for f, v in self.val.items()]
        rows += [("ROC AUC", f"{self.auc:.4f}"), ("EER", f"{100 * self.eer:.2f} %"),
                 ("fold accuracies", " ".join(f"{100 * a:.2f}" for a in self.fold_accuracies))]
        rows += [(f"time {k}", f"{v:.2f} s") for k, v in self.seconds.items()]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def evaluate_distances(distances: np.ndarray, issame: np.ndarray, folds: np.ndarray,
                       distance: str = "l2", far_targets=FAR_TARGETS) -> VerificationResult:
    """Run the protocol on pair distances, labels and fold ids (see the module docstring)."""
    distances, issame = np.asarray(distances, dtype=np.float64), np.asarray(issame, dtype=bool)
    if not np.isfinite(distances).all():
        raise FaceIgniteError(f"{int((~np.isfinite(distances)).sum())} pair distances are not "
                              "finite: the model produced NaN/inf embeddings (training diverged?)")
    fold_ids = np.unique(folds)
    # a threshold at FAR f needs at least 1/f impostor pairs to choose it on: below that FAR
    # the TAR is not measured (n/a), never a figure
    impostors = min(int((~issame[folds != fold]).sum()) for fold in fold_ids)
    min_far = 1.0 / max(impostors, 1)
    accuracies, thresholds = [], []
    vals: dict[float, list[float]] = {f: [] for f in far_targets}
    fars: dict[float, list[float]] = {f: [] for f in far_targets}
    for fold in fold_ids:
        test = folds == fold
        train_d, train_same = distances[~test], issame[~test]
        if train_same.all() or not train_same.any():
            raise FaceIgniteError("the folds outside fold "
                                  f"{fold} hold only one kind of pair: cannot choose a threshold")
        t = best_threshold(train_d, train_same)
        thresholds.append(t)
        accuracies.append(np.mean((distances[test] <= t) == issame[test]))
        for far in far_targets:
            t_far = threshold_at_far(train_d, train_same, far)
            accept, same = distances[test] <= t_far, issame[test]
            vals[far].append(accept[same].mean() if same.any() else np.nan)
            fars[far].append(accept[~same].mean() if (~same).any() else np.nan)
    from sklearn.metrics import auc as area_under_curve

    fpr, tpr, _ = _roc(distances, issame)
    acc, thr = np.array(accuracies), np.array(thresholds)
    return VerificationResult(
        distance=distance, accuracy=float(acc.mean()), accuracy_std=float(acc.std()),
        threshold=float(thr.mean()), threshold_std=float(thr.std()),
        val={f: float(np.nanmean(v)) if f >= min_far else None for f, v in vals.items()},
        val_std={f: float(np.nanstd(v)) if f >= min_far else None for f, v in vals.items()},
        far={f: float(np.nanmean(v)) if f >= min_far else None for f, v in fars.items()},
        auc=float(area_under_curve(fpr, tpr)), eer=equal_error_rate(fpr, tpr),
        fold_accuracies=acc, fold_thresholds=thr, fpr=fpr, tpr=tpr,
        num_pairs=len(issame), num_same=int(issame.sum()), num_folds=len(fold_ids),
        min_far=min_far)


def evaluate_embeddings(embeddings: np.ndarray, pairs: Pairs, distance: str = "l2",
                        far_targets=FAR_TARGETS) -> VerificationResult:
    """The protocol on ``embeddings`` (one row per key of ``pairs``)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(pairs.keys):
        raise FaceIgniteError(f"expected one embedding row per image of {pairs.path} "
                              f"({len(pairs.keys)}), got an array of shape {embeddings.shape}")
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise FaceIgniteError(f"{int(bad.sum())} of {len(bad)} embeddings are not finite (NaN/inf), "
                              f"e.g. {pairs.keys[int(np.argmax(bad))]}: training diverged?")
    result = evaluate_distances(pair_distances(embeddings, pairs.left, pairs.right, distance),
                                pairs.issame, pairs.folds, distance, far_targets)
    result.num_images, result.pairs_file = len(pairs.keys), pairs.path
    return result
