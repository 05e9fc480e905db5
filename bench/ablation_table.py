"""The real-face ablation's results table (``bench/real_data_lfw.py --ablation/--report``): one
JSON object per run in, mean ± std across seeds and per-seed differences against a baseline
out, with runs of different backbones, training sets and identity counts kept apart."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ABLATION_KEYS = [  # (column, result key, scale, decimals)
    ("LFW acc %", "norm_accuracy", 100, 1), ("fold std %", "norm_accuracy_std", 100, 1),
    ("EER %", "norm_eer", 100, 1), ("TAR@1e-3 %", "norm_val_far1e-3", 100, 2),
    ("TAR@1e-2 %", "norm_val_far1e-2", 100, 2), ("AUC", "norm_auc", 1, 3),
    ("raw-L2 acc %", "raw_accuracy", 100, 1), ("LFW intra/inter", "ratio_norm", 1, 3),
    ("CelebA held-out intra/inter", "celeba_ratio", 1, 3),
    ("CelebA held-out acc %", "celeba_accuracy", 100, 1), ("raw intra/inter", "ratio_raw", 1, 3),
    ("|f| raw", "feature_norm", 1, 2), ("mean |γ|", "bn_gamma_abs", 1, 3), ("|c|", "center_norm", 1, 2),
    ("train acc %", "train_accuracy", 100, 1), ("epochs", "epochs", 1, 2),
    ("train img/s", "train_images_per_s", 1, 1), ("LFW img/s", "lfw_images_per_s", 1, 0),
    ("wall s", "wall_s", 1, 0)]

def read_results(path: str | Path) -> list[dict]:
    """The runs of a JSON-lines results file (none if it does not exist yet).  A line that is not
    JSON (a run cut off while writing) is skipped with a one-line warning: that run counts as not
    done, so a resumed ablation runs it again."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path} line {number}: not a JSON object (a run cut short?); skipped",
                  file=sys.stderr)
    return rows


def append_result(path: str | Path, row: dict) -> None:
    """Append one run as a JSON line, on a line of its own even after a line cut short."""
    path = Path(path)
    cut_short = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        f.write(("\n" if cut_short else "") + json.dumps(row) + "\n")


def run_key(r: dict) -> tuple:
    """What makes two ablation runs the same experiment (older result lines lack the
    backbone fields: they were ResNet-34 on the box crops)."""
    return (r.get("model", "resnet34"), r.get("train_set", "aligned-160"), r["train_ids"],
            r["image_size"], r["variant"], r["seed"])


def group_label(r: dict, varying: set[str]) -> str:
    """A run's table label: its variant, preceded by whichever of backbone, training set and
    identity count differ between the runs of the table."""
    model, train_set, ids, size, variant, _ = run_key(r)
    parts = [p for k, p in (("model", model), ("train_set", train_set), ("ids", f"{ids} ids"),
                            ("size", f"{size} px")) if k in varying]
    return " · ".join(parts + [variant])


def varying_fields(rows: list[dict]) -> set[str]:
    keys = [run_key(r) for r in rows]
    return {name for i, name in enumerate(("model", "train_set", "ids", "size"))
            if len({k[i] for k in keys}) > 1}


def summarize(rows: list[dict], columns: list[str] | None = None,
              variant_order: Sequence[str] = ()) -> str:
    """Markdown table: per (backbone, training set, identities, variant), mean ± std across
    seeds of each ABLATION_KEYS column (or of ``columns``, result keys); within each backbone,
    set and identity count the variants come in ``variant_order``."""
    keys = [k for k in ABLATION_KEYS if columns is None or k[1] in columns]
    varying = varying_fields(rows)
    contexts = list(dict.fromkeys(run_key(r)[:4] for r in rows))  # in order of appearance
    order = {v: i for i, v in enumerate(variant_order)}
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (contexts.index(run_key(r)[:4]),
                                         order.get(r["variant"], len(order)), r["seed"])):
        groups.setdefault(group_label(r, varying), []).append(r)
    head = "| run | seeds | " + " | ".join(c for c, *_ in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for label, rs in groups.items():
        cells = []
        for _, key, scale, d in keys:
            x = np.array([r[key] for r in rs if r.get(key) is not None], float) * scale
            sd = x.std(ddof=1) if len(x) > 1 else 0.0
            cells.append(f"{x.mean():.{d}f} ± {sd:.{d}f}" if len(x) else "–")
        lines.append(f"| {label} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(rows: list[dict], base: str = "softmax",
                       keys=("norm_accuracy", "norm_val_far1e-3", "norm_val_far1e-2", "ratio_norm",
                             "celeba_ratio", "celeba_accuracy"),
                       against: tuple[str, str] | None = None) -> str:
    """Mean ± std over seeds of (run − its baseline at the same seed): the baseline is variant
    ``base`` at the same backbone, training set and identity count or, with ``against`` =
    (backbone, training set), that backbone and set at the same variant and identity count."""
    def baseline(key: tuple) -> tuple:
        return (*against, *key[2:]) if against else (*key[:4], base, key[5])

    by = {run_key(r): r for r in rows}
    varying = varying_fields(rows)
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for key in sorted(by, key=lambda k: k[5]):
        if baseline(key) != key and baseline(key) in by:
            groups.setdefault(key[:5], []).append((by[key], by[baseline(key)]))
    lines = []
    for pairs in groups.values():
        parts = []
        for k in keys:
            d = np.array([a[k] - b[k] for a, b in pairs if a.get(k) is not None and b.get(k) is not None])
            if not len(d):
                continue
            scale = 1 if "ratio" in k else 100
            parts.append(f"{k} {scale * d.mean():+.3g} ± {scale * (d.std(ddof=1) if len(d) > 1 else 0):.2g}")
        seeds = ",".join(str(a["seed"]) for a, _ in pairs)
        name = group_label(pairs[0][1], varying) if against else base
        lines.append(f"{group_label(pairs[0][0], varying)} − {name} (seeds {seeds}): " + "; ".join(parts))
    return "\n".join(lines)
