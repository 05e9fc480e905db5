"""Real faces under the IJB protocol: LFW arranged as an IJB-style 1:1 template benchmark.

IJB-B/C cannot be shipped, so this builds the IJB meta layout from LFW: every person with at least
4 of the 7,701 ``pairs.txt`` images gets two templates (alternate images; each still image is
its own media), detector score = the MTCNN probability of ``lfw-mtcnn-160/landmarks.csv``, and
every pair of templates is a pair (genuine when same person).  Features: the published
MobileFaceNet's raw embeddings of the image and its mirror, summed (``shared/data/pretrained``),
then random features of the same shape as the chance baseline.  Each is scored with
``python -m faceignite.ijb --embeddings`` under the four N/D switch settings.

    python bench/real_data_ijb.py
"""
from __future__ import annotations

import argparse
import csv
import io
import tempfile
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from common import SHARED_DATA as DATA

from faceignite.ijb import cli
from faceignite.ijb.report import far_label

MODES = [("N1 D1 (default)", []), ("N1 D0", ["--no_detector_score"]),
         ("N0 D1", ["--no_norm_score"]), ("N0 D0", ["--no_detector_score", "--no_norm_score"])]


def build_layout(root: Path, min_images: int) -> tuple[np.ndarray, list[str], int, int]:
    """Write ``root/meta/ijbc_*.txt``; return (flip-summed features, their names, templates,
    pairs)."""
    emb_dir = DATA / "pretrained" / "mobilefacenet_xiaoccer" / "lfw-pairs-embeddings"
    emb = np.load(emb_dir / "emb.npy")
    names = (emb_dir / "names.txt").read_text().split()
    features = emb[:, :128] + emb[:, 128:]
    with open(DATA / "lfw" / "lfw-mtcnn-160" / "landmarks.csv", newline="") as f:
        prob = {r["path"].rsplit(".", 1)[0]: float(r["prob"] or 0.5) for r in csv.DictReader(f)}
    by_person = defaultdict(list)
    for name in names:
        by_person[name.split("/")[0]].append(name)
    faces, template_person = [], {}
    for person in sorted(p for p, v in by_person.items() if len(v) >= min_images):
        for k, name in enumerate(sorted(by_person[person])):
            template = len(template_person) + 1 + k % 2
            faces.append((name, template, len(faces) + 1))
        template_person[len(template_person) + 1] = person
        template_person[len(template_person) + 1] = person
    meta = root / "meta"
    meta.mkdir(parents=True)
    with open(meta / "ijbc_face_tid_mid.txt", "w") as f:
        f.writelines(f"{n} {t} {m}\n" for n, t, m in faces)
    with open(meta / "ijbc_name_5pts_score.txt", "w") as f:  # landmarks unused with --embeddings
        f.writelines(f"{n} {'0 ' * 10}{prob[n]:.4f}\n" for n, _, _ in faces)
    templates = sorted(template_person)
    pairs = 0
    with open(meta / "ijbc_template_pair_label.txt", "w") as f:
        for i, a in enumerate(templates):
            for b in templates[i + 1:]:
                f.write(f"{a} {b} {int(template_person[a] == template_person[b])}\n")
                pairs += 1
    return features, names, len(templates), pairs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min_images", type=int, default=4, help="Images per person (default: 4)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "IJBC"
        features, names, templates, pairs = build_layout(root, args.min_images)
        rng = np.random.default_rng(0)
        sources = {"MobileFaceNet (published, CASIA)": features,
                   "random features (chance)": rng.normal(size=features.shape).astype(np.float32)}
        (Path(tmp) / "names.txt").write_text("\n".join(names) + "\n")
        print(f"LFW as IJB: {templates} templates, {pairs} pairs "
              f"({templates // 2} genuine)\n")
        rows = []
        for label, array in sources.items():
            np.save(Path(tmp) / "f.npy", array)
            for mode, switches in MODES:
                with redirect_stdout(io.StringIO()):
                    result = cli.main(["--embeddings", str(Path(tmp) / "f.npy"), "--names",
                                       str(Path(tmp) / "names.txt"), "--ijb", str(root),
                                       "--out", str(Path(tmp) / "out"), *switches])
                rows.append((label, mode, result))
    fars = list(rows[0][2].tar)
    print("| features | mode | " + " | ".join(f"TAR@{far_label(f)}" for f in fars) + " | AUC |")
    print("|---|---|" + "---|" * (len(fars) + 1))
    for label, mode, result in rows:
        print(f"| {label} | {mode} | " + " | ".join(
            "n/a" if result.tar[f] is None else f"{100 * result.tar[f]:.2f}" for f in fars)
              + f" | {100 * result.auc:.3f} |")


if __name__ == "__main__":
    main()
