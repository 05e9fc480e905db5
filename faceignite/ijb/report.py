"""ROC of the template pair scores: TAR at FAR read as insightface reads it, AUC, the PNG, files.

The operating point for a FAR target is the point of scikit-learn's ROC curve
(``roc_curve(labels, scores)``, intermediate points dropped as by default) whose FAR is nearest
the target (``argmin |fpr - target|``; on a tie the larger FAR, then the larger TAR), exactly the
reading of insightface's ``eval_ijbc.py``.  It is not "the largest TAR with FAR ≤ target": when
the impostor pairs are too few to resolve the target, the nearest point may lie above it
(``far`` in the result says which FAR was read).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from faceignite.errors import FaceIgniteError
from faceignite.output_files import save_png

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def far_label(far: float) -> str:
    """``1e-04`` → ``1e-4``."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass
class IJBResult:
    """TAR (fraction) at each FAR target, with the FAR and score threshold actually read."""

    target: str
    auc: float
    num_genuine: int
    num_impostor: int
    tar: dict[float, float | None]  # None: fewer than one impostor pair at that FAR (n/a)
    far: dict[float, float | None]
    threshold: dict[float, float | None]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    skipped_images: int = 0
    skipped_pairs: int = 0
    settings: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """JSON-ready numbers: ``tar@far=1e-4`` etc. as fractions, ``auc``, counts."""
        out = {f"tar@far={far_label(k)}": v for k, v in self.tar.items()}
        out.update({f"far_read@far={far_label(k)}": v for k, v in self.far.items()})
        out.update({f"threshold@far={far_label(k)}": v for k, v in self.threshold.items()})
        out.update(auc=self.auc, genuine_pairs=self.num_genuine, impostor_pairs=self.num_impostor,
                   skipped_images=self.skipped_images, skipped_pairs=self.skipped_pairs)
        return out

    def table(self) -> str:
        """Two-row text table, TAR in percent, as insightface prints it."""
        head = ["FAR"] + [far_label(f) for f in self.tar]
        row = [f"TAR {self.target} %"] + ["n/a" if v is None else f"{100 * v:.2f}"
                                          for v in self.tar.values()]
        widths = [max(len(a), len(b)) for a, b in zip(head, row)]
        lines = [" | ".join(s.rjust(w) for s, w in zip(r, widths)) for r in (head, row)]
        unresolved = [far_label(f) for f, v in self.tar.items() if v is None]
        note = (f"\n(n/a: {self.num_impostor} impostor pairs resolve FAR >= "
                f"{far_label(1.0 / self.num_impostor)} only)" if unresolved else "")
        return (f"{lines[0]}\n{lines[1]}\nAUC {100 * self.auc:.4f} %, {self.num_genuine} genuine "
                f"+ {self.num_impostor} impostor pairs{note}")


def nearest_far_point(fpr: np.ndarray, tpr: np.ndarray, target: float) -> int:
    """Index of the ROC point read for ``target``: FAR nearest, ties → larger FAR, larger TAR."""
    reverse = np.argmin(np.abs(fpr[::-1] - target))  # first of the reversed = last of the curve
    return len(fpr) - 1 - int(reverse)


def roc_report(scores: np.ndarray, labels: np.ndarray, target: str,
               far_targets=FAR_TARGETS) -> IJBResult:
    """The ROC of ``scores`` (higher = more alike) against ``labels`` (1 genuine, 0 impostor)."""
    labels = np.asarray(labels)
    genuine = int((labels == 1).sum())
    if genuine == 0 or genuine == len(labels):
        raise FaceIgniteError(f"{target}: the ROC needs genuine and impostor pairs, got {genuine} "
                              f"genuine of {len(labels)}")
    from sklearn.metrics import auc, roc_curve  # here: importing scikit-learn takes 0.7 s

    fpr, tpr, thresholds = roc_curve(labels, scores)
    impostor = len(labels) - genuine
    # a FAR below one impostor pair is not measured: n/a (None), never the nearest point's figure
    picked = {far: nearest_far_point(fpr, tpr, far) if far * impostor >= 1 else None
              for far in far_targets}

    def at(values: np.ndarray) -> dict[float, float | None]:
        return {f: None if i is None else float(values[i]) for f, i in picked.items()}

    return IJBResult(target, float(auc(fpr, tpr)), genuine, impostor, at(tpr), at(fpr),
                     at(thresholds), fpr, tpr)


def save_roc_png(result: IJBResult, path: str, title: str) -> str:
    """The ROC on a log-FAR axis (1e-6 … 1), TAR marked at each FAR target; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lowest = min(min(result.tar), 10.0 ** np.floor(np.log10(1.0 / max(result.num_impostor, 1))))
    ax.plot(np.clip(result.fpr, lowest, 1.0), result.tpr, lw=2,
            label=f"AUC {100 * result.auc:.2f} %")
    for far, tar in result.tar.items():
        if tar is None:  # n/a: not measured
            continue
        ax.plot([max(result.far[far], lowest)], [tar], "o",
                label=f"TAR {100 * tar:.2f} % @ FAR {far_label(far)}")
    ax.set_xscale("log")
    ax.set_xlim(lowest, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR, log scale)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title_fontsize=8,
              title=f"{result.num_genuine} genuine, {result.num_impostor} impostor pairs")
    fig.tight_layout()
    return save_png(fig, path)


def save_results(result: IJBResult, scores: np.ndarray, labels: np.ndarray, out_dir: str,
                 source: str) -> dict[str, str]:
    """Write ``<target>_scores.npy``, ``<target>_labels.npy``, ``<target>_roc.png`` and
    ``<target>_metrics.json`` in ``out_dir``; return their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, result.target.lower())
    paths = {"scores": f"{stem}_scores.npy", "labels": f"{stem}_labels.npy",
             "roc": f"{stem}_roc.png", "metrics": f"{stem}_metrics.json"}
    np.save(paths["scores"], np.asarray(scores, dtype=np.float64))
    np.save(paths["labels"], np.asarray(labels, dtype=np.int8))
    save_roc_png(result, paths["roc"], f"{os.path.basename(source)} on {result.target} 1:1")
    with open(paths["metrics"], "w", encoding="utf-8") as f:
        json.dump({"source": source, "target": result.target, **result.settings,
                   **result.metrics()}, f, indent=2)
    return paths
