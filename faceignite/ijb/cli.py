"""``python -m faceignite.ijb``: IJB-B / IJB-C 1:1 template verification of a checkpoint or of
precomputed features.

    python -m faceignite.ijb --checkpoint runs/x/best.pt --ijb IJB_release/IJBC --target IJBC
    python -m faceignite.ijb --embeddings f.npy --names f.txt --ijb IJB_release/IJBC --target IJBC

Writes to ``--out``: ``<target>_scores.npy`` + ``<target>_labels.npy`` (one per kept pair, in the
pairs file's order), ``<target>_roc.png``, ``<target>_metrics.json``, and for a checkpoint the
image features ``<target>_features.npy`` + ``.txt`` (names), which ``--embeddings`` reads back
(re-scoring with other switches then needs no embedding:
about 30 CPU-seconds at IJB-B scale).  Prints the TAR@FAR table.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import numpy as np

from faceignite.config import add_options, default_num_workers
from faceignite.errors import FaceIgniteError
from faceignite.evaluate import load_embeddings
from faceignite.output_files import make_output_folder, write_error
from faceignite.ijb.meta import (TARGETS, Landmarks, MetaFiles, TemplateMedia, TemplatePairs,
                                 meta_files, read_landmarks, read_template_media,
                                 read_template_pairs)
from faceignite.ijb.protocol import pair_scores, template_features
from faceignite.ijb.report import IJBResult, roc_report, save_results

logger = logging.getLogger("faceignite")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceignite.ijb",
                                description="IJB-B/IJB-C 1:1 template verification "
                                            "(insightface eval_ijbc.py protocol)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Training checkpoint (.pt), run folder (its best: "
                                             "--which), or exported model folder: embeds the "
                                             "loose crops")
    add_options(p, ("which",))
    source.add_argument("--embeddings", help="Precomputed image features (.npy, one row per "
                                             "image, any order; needs --names)")
    source.add_argument("--weights", help="A bare weights file of --model (arcface_torch "
                                          "backbone file, facenet-pytorch file, faceignite "
                                          "weights): embeds the loose crops")
    source.add_argument("--onnx", help="An ONNX embedding model (ONNX Runtime; input size from "
                                       "the graph): embeds the loose crops")
    from faceignite.evaluate import add_weights_options
    add_weights_options(p)
    p.add_argument("--names",
                   help="With --embeddings: one image name per row, as in the meta files")
    p.add_argument("--ijb", required=True,
                   help="The target's release folder, holding meta/ and loose_crop/")
    p.add_argument("--target", default="IJBC", type=str.upper, choices=TARGETS,
                   help="IJBC or IJBB (default: IJBC)")
    p.add_argument("--no_detector_score", action="store_true",
                   help="Do not weight image features by their detector score (ablation)")
    p.add_argument("--no_norm_score", action="store_true",
                   help="L2-normalise image features first, dropping their norm (ablation)")
    p.add_argument("--skip_missing", action="store_true",
                   help="Skip (and count) images without crop, landmark row or feature, and the "
                        "pairs of templates left empty, instead of failing")
    p.add_argument("--image_size", type=int, default=None,
                   help="With --weights of a network that takes any size: its input size "
                        "(default: 112; 160 for inception_resnet_v1)")
    p.add_argument("--batch_size", type=int, default=128, help="Crops per batch (default: 128)")
    p.add_argument("--num_workers", type=int, default=default_num_workers(),
                   help="Image loading workers (default: half the CPUs, max 8)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--out", default=None, help="Output folder (default: runs/ijb-<target>)")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace the results of an earlier evaluation in --out")
    return p


def output_names(target: str, checkpoint: bool) -> list[str]:
    """The files an evaluation of ``target`` writes into ``--out``."""
    kinds = ["scores.npy", "labels.npy", "roc.png", "metrics.json"]
    kinds += ["features.npy", "features.txt"] if checkpoint else []
    return [f"{target.lower()}_{kind}" for kind in kinds]


def prepare_out(out_dir: str, names: Sequence[str], overwrite: bool) -> None:
    """Make ``--out`` before any work, or one line: a file in the way, a read-only or virtual
    file system, or earlier results there (replaced only with ``overwrite``)."""
    make_output_folder(out_dir, "--out")
    probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, out_dir, "--out")) from None
    existing = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
    if existing and not overwrite:
        raise FaceIgniteError(f"--out {out_dir} already holds {', '.join(existing)} of an earlier "
                              "evaluation: pass --overwrite to replace them, or another --out")


def _face_line(tm: TemplateMedia, name: str) -> int:
    return int(tm.lines[tm.names.index(name)])


def crops_to_embed(tm: TemplateMedia, landmarks: Landmarks, crops: str, skip_missing: bool
                   ) -> tuple[list[str], list[str], np.ndarray, int]:
    """``(names, crop paths, landmarks (N,5,2), skipped)`` of the distinct images of ``tm``.

    An image without landmark row or crop file is an error naming it, or skipped and counted."""
    names, paths, rows, skipped = [], [], [], 0
    for name in dict.fromkeys(tm.names):
        row = landmarks.row.get(name)
        path = os.path.join(crops, name)
        if row is None or not os.path.isfile(path):
            problem = (f"image {name} ({tm.path} line {_face_line(tm, name)}) has no row in "
                       f"{landmarks.path}" if row is None else f"IJB crop not found: {path}")
            if not skip_missing:
                raise FaceIgniteError(f"{problem} (--skip_missing skips such images)")
            logger.warning("skipping: %s", problem)
            skipped += 1
            continue
        names.append(name)
        paths.append(path)
        rows.append(row)
    if not names:
        raise FaceIgniteError(f"none of the images of {tm.path} has both a crop in {crops} and a "
                              f"landmark row")
    return names, paths, landmarks.points[rows], skipped


def load_features(embeddings: str, names: str) -> tuple[np.ndarray, list[str]]:
    """The feature array, memory-mapped (no pickles), and its row names, checked together
    (``faceignite.evaluate``'s reading: the same one-line errors)."""
    return load_embeddings(embeddings, names, mmap_mode="r")


def face_rows(tm: TemplateMedia, feature_names: Sequence[str], names_file: str,
              landmarks: Landmarks | None, skip_missing: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(kept faces mask, their feature rows, their detector scores or None)``.

    A face whose image has no feature (or, when ``landmarks`` is given, no detector score) is an
    error naming it, or dropped with ``skip_missing``."""
    index: dict[str, int] = {}
    for i, name in enumerate(feature_names):
        if index.setdefault(name, i) != i:
            raise FaceIgniteError(f"--names {names_file} line {i + 1}: image {name} is listed "
                                  f"twice")
    keep = np.ones(len(tm.names), dtype=bool)
    rows = np.zeros(len(tm.names), dtype=np.int64)
    scores = None if landmarks is None else np.zeros(len(tm.names), dtype=np.float64)
    warned: set[str] = set()
    for j, name in enumerate(tm.names):
        row = index.get(name)
        score_row = None if landmarks is None else landmarks.row.get(name)
        if row is None or (landmarks is not None and score_row is None):
            where = f"image {name} ({tm.path} line {tm.lines[j]})"
            problem = (f"{where} has no feature row in {names_file}" if row is None else
                       f"{where} has no detector score in {landmarks.path}")
            if not skip_missing:
                hint = "" if row is None else "; --no_detector_score needs none"
                raise FaceIgniteError(f"{problem} (--skip_missing skips it{hint})")
            if name not in warned:
                logger.warning("skipping: %s", problem)
                warned.add(name)
            keep[j] = False
            continue
        rows[j] = row
        if scores is not None:
            scores[j] = landmarks.scores[score_row]
    if not keep.any():
        raise FaceIgniteError(f"no image of {tm.path} has a feature in {names_file}")
    return keep, rows[keep], None if scores is None else scores[keep]


def check_finite(features: np.ndarray, rows: np.ndarray, feature_names: Sequence[str],
                 names_file: str, chunk: int = 65_536) -> None:
    """One line naming the first image whose feature row holds NaN or infinity (read in
    ``chunk``-row blocks: the features may be a memory-mapped file)."""
    used = np.unique(rows)
    for start in range(0, len(used), chunk):
        block = np.asarray(features[used[start:start + chunk]])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = int(used[start + int(np.flatnonzero(bad)[0])])
            raise FaceIgniteError(f"the feature of image {feature_names[row]} (row {row + 1} of "
                                  f"--names {names_file}) holds NaN or infinity; "
                                  f"{int(bad.sum())}+ rows like it: recompute the features")


def score_features(tm: TemplateMedia, pairs: TemplatePairs, features: np.ndarray,
                   feature_names: Sequence[str], names_file: str, landmarks: Landmarks | None,
                   norm_score: bool, skip_missing: bool
                   ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(pair scores, labels, skipped faces, skipped pairs)`` under the protocol.

    ``landmarks`` None: no detector-score weighting."""
    keep, rows, scores = face_rows(tm, feature_names, names_file, landmarks, skip_missing)
    check_finite(features, rows, feature_names, names_file)
    ids, feats = template_features(features, rows, tm.templates[keep], tm.medias[keep], scores,
                                   norm_score)
    usable = np.isin(pairs.first, ids) & np.isin(pairs.second, ids)
    if not usable.all():
        logger.warning("skipping %d of %d pairs: a template lost all its images",
                       int((~usable).sum()), len(pairs))
    scores_out = pair_scores(ids, feats, pairs.first[usable], pairs.second[usable])
    return scores_out, pairs.labels[usable], int((~keep).sum()), int((~usable).sum())


def embed_checkpoint(args: argparse.Namespace, files: MetaFiles, tm: TemplateMedia,
                     landmarks: Landmarks, out_dir: str) -> tuple[str, str, dict]:
    """Embed the crops with the checkpoint; ``(features .npy, names .txt, settings)``.  Skipped
    crops have no row: their faces are counted when the features are scored."""
    import torch

    from faceignite.runtime import resolve_device
    from faceignite.evaluate import load_evaluated_model
    from faceignite.ijb.images import embed_crops

    names, paths, points, _ = crops_to_embed(tm, landmarks, files.crops, args.skip_missing)
    device = resolve_device(args.device)
    model, info = load_evaluated_model(args, device)
    size = info["image_size"]
    logger.info("model %s: %s, %d-d, %d px; embedding %d %s crops (flip added) on %s",
                info["source"], model.architecture, model.embedding_dim, size, len(paths),
                files.target, device)
    stem = os.path.join(out_dir, f"{files.target.lower()}_features")
    done = embed_crops(model, paths, points, size, stem + ".npy", torch.device(device),
                       args.batch_size, args.num_workers, args.skip_missing)
    with open(stem + ".txt", "w", encoding="utf-8") as f:
        f.writelines(n + "\n" for n, ok in zip(names, done) if ok)
    settings = {"image_size": size, "flip": True, "alignment": "five-point, ArcFace template",
                "checkpoint": info["source"]}
    return stem + ".npy", stem + ".txt", settings


def evaluate(args: argparse.Namespace) -> tuple[IJBResult, dict[str, str]]:
    """Run the protocol for the parsed options; write the outputs."""
    files = meta_files(args.ijb, args.target)
    out_dir = args.out or os.path.join("runs", f"ijb-{files.target.lower()}")
    tm = read_template_media(files.face_tid_mid)  # every meta file is checked before embedding
    pairs = read_template_pairs(files.pairs, tm.templates)
    model_file = args.checkpoint or args.weights or args.onnx
    need_landmarks = model_file or not args.no_detector_score
    landmarks = read_landmarks(files.landmarks) if need_landmarks else None
    prepare_out(out_dir, output_names(files.target, bool(args.checkpoint)), args.overwrite)
    settings: dict = {}
    if model_file:
        embeddings, names, settings = embed_checkpoint(args, files, tm, landmarks, out_dir)
    else:
        embeddings, names = args.embeddings, args.names
    features, feature_names = load_features(embeddings, names)
    scores, labels, skipped_faces, skipped_pairs = score_features(
        tm, pairs, features, feature_names, names, None if args.no_detector_score else landmarks,
        not args.no_norm_score, args.skip_missing)
    result = roc_report(scores, labels, files.target)
    result.skipped_images = skipped_faces  # face rows without feature (or detector score)
    result.skipped_pairs = skipped_pairs
    result.settings = {**settings, "embeddings": embeddings, "norm_score": not args.no_norm_score,
                       "detector_score": not args.no_detector_score}
    source = model_file or args.embeddings
    return result, save_results(result, scores, labels, out_dir, source)


def main(argv: Sequence[str] | None = None) -> IJBResult:
    """Parse ``argv``, evaluate, print the table; exit code 2 with one line on a user error."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.embeddings and not args.names:
        parser.error("--embeddings needs --names (one image name per row)")
    from faceignite.evaluate import check_weights_options
    check_weights_options(parser, args)
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch_size must be >= 1 and --num_workers >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    try:
        result, paths = evaluate(args)
    except FaceIgniteError as exc:
        logger.error("error: %s", exc)
        raise SystemExit(2) from None
    mode = (f"norm score {'off' if args.no_norm_score else 'on'}, "
            f"detector score {'off' if args.no_detector_score else 'on'}")
    skipped = (f"; skipped {result.skipped_images} face rows, {result.skipped_pairs} pairs"
               if result.skipped_images or result.skipped_pairs else "")
    source = args.checkpoint or args.weights or args.onnx or args.embeddings
    print(f"{source} on {result.target} ({mode}{skipped})\n"
          f"{result.table()}\nscores {paths['scores']}\nROC curve {paths['roc']}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
