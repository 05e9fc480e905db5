"""ROC curve PNG of a verification result (matplotlib's Agg canvas: no display, no pyplot state)."""
from __future__ import annotations

import numpy as np

from faceignite.output_files import save_png
from faceignite.verification.metrics import DISTANCES, VerificationResult, far_label


def save_roc_curve(result: VerificationResult, path: str, title: str | None = None) -> str:
    """Write the ROC curve (log-scale FAR axis; AUC and accuracy in the legend) to ``path``.

    TAR at each FAR target is marked.  The file is written atomically; returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    negatives = max(result.num_pairs - result.num_same, 1)
    lowest = 10.0 ** np.floor(np.log10(1.0 / negatives))  # below one false accept
    fpr = np.clip(result.fpr, lowest, 1.0)  # FAR 0 sits on the left edge of the log axis
    ax.plot(fpr, result.tpr, lw=2,
            label=f"AUC {result.auc:.4f}, accuracy {100 * result.accuracy:.2f} % "
                  f"± {100 * result.accuracy_std:.2f}")
    for far, val in result.val.items():
        if val is None:  # below the FAR the impostor pairs can resolve: not plotted
            continue
        ax.plot([max(far, lowest)], [val], "o", label=f"TAR {100 * val:.2f} % @ FAR {far_label(far)}")
    chance = np.logspace(np.log10(lowest), 0, 50)
    ax.plot(chance, chance, "--", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(lowest, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR, log scale)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title or "ROC", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    distance = DISTANCES[result.distance].split(" between")[0]
    ax.legend(loc="lower right", fontsize=8, title=f"{result.num_pairs} pairs, {distance}",
              title_fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
