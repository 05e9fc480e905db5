"""Stand-alone pair verification under exactly the training-time protocol.

    python -m faceignite.evaluate --checkpoint runs/x/best.pt --lfw lfw-mtcnn-160 [--lfw_flip]
    python -m faceignite.evaluate --checkpoint runs/x/best.pt --val_targets cfp_fp.bin agedb_30.bin
    python -m faceignite.evaluate --embeddings emb.npy --names names.txt --lfw_pairs pairs.txt
    python -m faceignite.evaluate --model r50 --weights model.pt --val_targets lfw.bin cfp_fp.bin
    python -m faceignite.evaluate --onnx w600k_r50.onnx --lfw lfw-112 [--normalize insightface]

``--model NAME --weights FILE`` evaluates a bare weights file (an arcface_torch backbone, a
facenet-pytorch file, faceignite's weights), ``--onnx FILE`` any ONNX embedding model (input size
from the graph; normalisation from its metadata, else insightface's).  Any LFW-format pairs
file works.  ``--embeddings`` evaluates another model's embeddings (one
row per image, named ``Name/Name_000i`` in ``--names``).  Prints the metric table, writes the
ROC PNG and ``metrics.json`` in ``<output_dir>/evaluate-<time>/``.  With ``--val_targets``
(insightface ``.bin`` files or LFW-format folders; ``--lfw`` too, first, named ``lfw``): one
line per target, starting with its name, and a ROC PNG per target.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch

from faceignite.cli import exits_on_error
from faceignite.config import GROUPS, add_options, add_runtime_args
from faceignite.embed import load_inference_model
from faceignite.errors import FaceIgniteError
from faceignite.models import ARCHITECTURES
from faceignite.verification import (VerificationResult, create_pairs_evaluator, evaluate_embeddings,
                            find_pairs_file, match_names, read_pairs, save_roc_curve)
from faceignite.verification.targets import create_target_evaluator, plan_targets
from faceignite.run import session
from faceignite.runtime import Runtime

logger = logging.getLogger("faceignite")


def get_args_parser() -> argparse.ArgumentParser:
    """Options: what to evaluate, the LFW group shared with training, and the runtime."""
    p = argparse.ArgumentParser(prog="python -m faceignite.evaluate",
                                description="Pair verification (LFW protocol) of a checkpoint "
                                            "or of precomputed embeddings")
    what = p.add_argument_group("what to evaluate")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=str,
                        help="A training checkpoint (.pt; a run folder: its best, --which) or "
                             "an exported model folder (python -m faceignite.export)")
    add_options(what, ("which",))
    source.add_argument("--embeddings", type=str,
                        help="A .npy array, one embedding row per image (needs --names)")
    source.add_argument("--weights", type=str,
                        help="A bare weights file of --model (arcface_torch backbone file, "
                             "facenet-pytorch file, faceignite weights): no checkpoint needed")
    source.add_argument("--onnx", type=str,
                        help="An ONNX embedding model (N x 3 x S x S -> N x D), run by ONNX "
                             "Runtime; input size read from the graph")
    add_weights_options(what)
    what.add_argument("--names", type=str,
                      help="With --embeddings: text file, one 'Name/Name_000i' per row of the array")
    # the LFW options of training, but flip and distance default to the checkpoint's own
    add_options(p.add_argument_group(GROUPS["lfw"]),
                ("lfw", "lfw_pairs", "lfw_batch_size", "lfw_skip_missing", "lfw_flip", "distance",
                 "val_targets", "val_pairs"),
                defaults={"lfw_flip": None, "distance": None},
                helps={"lfw_flip": "Average with the mirrored image (default: as the checkpoint "
                                   "was validated)",
                       "distance": "Pair distance: l2 or cosine (default: the checkpoint's "
                                   "training setting; l2 for --embeddings)",
                       "val_targets": "With --checkpoint: verification sets, each an "
                                      "insightface .bin file or an LFW-format folder (after "
                                      "--lfw, named lfw); one line per target"})
    add_runtime_args(p, ("device", "amp", "output_dir", "image_size", "num_workers"),
                     defaults={"image_size": None},
                     helps={"image_size": "Input size (default: the checkpoint's image_size, "
                                          "else 160)",
                            "output_dir": "Folder for the ROC PNG and metrics.json (default: "
                                          "./runs/evaluate-<time>)"})
    return p


def load_embeddings(embeddings: str, names: str, mmap_mode: str | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """A 2-D float array (no pickles; ``mmap_mode="r"``: memory-mapped) and its row names,
    checked against each other."""
    try:
        array = np.load(embeddings, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise FaceIgniteError(f"--embeddings file not found: {embeddings}") from None
    except EOFError:  # numpy's "No data left in file": a zero-byte or cut file
        raise FaceIgniteError(f"--embeddings {embeddings} is empty or truncated: not a .npy "
                              f"array") from None
    except (OSError, ValueError) as exc:
        if "allow_pickle" in str(exc):  # numpy's advice to unpickle: never taken here
            raise FaceIgniteError(f"--embeddings {embeddings} is not a .npy array (another "
                                  f"format; pickled data is not loaded, for safety)") from None
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise FaceIgniteError(f"cannot read --embeddings {embeddings} as a .npy array "
                              f"(no pickles): {reason}") from None
    if (array.ndim != 2 or not np.issubdtype(array.dtype, np.number)
            or np.issubdtype(array.dtype, np.complexfloating) or array.shape[1] == 0):
        raise FaceIgniteError(f"--embeddings {embeddings}: expected a 2-D array of real numbers "
                              f"(images x dimensions, at least one), got {array.dtype} "
                              f"{array.shape}")
    try:
        with open(names, encoding="utf-8-sig") as f:  # a byte-order mark is accepted
            rows = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceIgniteError(f"cannot read --names {names}: {exc}") from exc
    if len(rows) != len(array):
        raise FaceIgniteError(f"--names {names} has {len(rows)} names but --embeddings "
                              f"{embeddings} has {len(array)} rows: one name per row")
    return array, rows


def evaluate_embeddings_file(cfg: argparse.Namespace) -> VerificationResult:
    """``--embeddings``/``--names`` on ``--lfw_pairs`` (or the pairs file in ``--lfw``)."""
    array, names = load_embeddings(cfg.embeddings, cfg.names)
    pairs = read_pairs(find_pairs_file(cfg.lfw, cfg.lfw_pairs))
    total = len(pairs)
    pairs, rows = match_names(pairs, names, cfg.lfw_skip_missing, cfg.names)
    logger.info("embeddings %s: %d x %d, %d of them in %d pairs", cfg.embeddings, *array.shape,
                len(rows), len(pairs))
    result = evaluate_embeddings(array[rows], pairs, cfg.distance)
    result.skipped_pairs = total - len(pairs)
    return result


def add_weights_options(group: Any) -> None:
    """``--model``, ``--embedding_dim`` and ``--normalize`` of ``--weights`` / ``--onnx``
    (shared with ``python -m faceignite.ijb``)."""
    group.add_argument("--model", type=str, choices=ARCHITECTURES,
                       help="With --weights: the architecture of the file (e.g. r50, mbf, "
                            "inception_resnet_v1)")
    group.add_argument("--embedding_dim", type=int, default=None,
                       help="With --weights: embedding size (default: the file's head)")
    group.add_argument("--normalize", type=str, default=None,
                       help="Input normalisation: insightface, facenet, imagenet or MEAN,STD in "
                            "pixel units (default: --weights: the architecture's own; --onnx: "
                            "the file's metadata, else insightface; checkpoints: their own)")


def check_weights_options(parser: argparse.ArgumentParser, cfg: argparse.Namespace) -> None:
    """``--weights`` needs ``--model``; ``--model``/``--embedding_dim`` only with ``--weights``."""
    if getattr(cfg, "weights", None) and not cfg.model:
        parser.error("--weights needs --model NAME (the architecture of the file, e.g. r50)")
    if not getattr(cfg, "weights", None) and (cfg.model or cfg.embedding_dim):
        parser.error("--model and --embedding_dim go with --weights FILE")


def model_source(cfg: argparse.Namespace) -> str:
    """The file the model comes from: --checkpoint, --weights or --onnx."""
    return cfg.checkpoint or getattr(cfg, "weights", None) or getattr(cfg, "onnx", None)


def load_evaluated_model(cfg: argparse.Namespace, device: torch.device | str):
    """``(model, info)`` of ``--checkpoint``, ``--weights`` (with ``--model``) or ``--onnx``;
    ``info`` as :func:`~faceignite.embed.load_inference_model` gives it (a bare file has no
    threshold; flip off, L2 distance, the network's input size)."""
    if getattr(cfg, "weights", None) or getattr(cfg, "onnx", None):
        from faceignite.eval_models import onnx_model, weights_model

        if cfg.onnx:
            model = onnx_model(cfg.onnx, cfg.normalize)
            asked = getattr(cfg, "image_size", None)
            if asked and asked != model.input_size:
                raise FaceIgniteError(f"--onnx {cfg.onnx} takes {model.input_size}x"
                                      f"{model.input_size} images (its graph), not --image_size "
                                      f"{asked}: leave --image_size out")
        else:
            model = weights_model(cfg.model, cfg.weights, cfg.embedding_dim, cfg.normalize)
        model = model.to(device)
        size = (getattr(cfg, "image_size", None) or model.input_size
                or (160 if cfg.weights and cfg.model == "inception_resnet_v1" else 112))
        return model, {"image_size": size, "lfw_threshold": None, "distance": "l2",
                       "flip": False, "source": model_source(cfg)}
    return load_inference_model(cfg.checkpoint, device, which=getattr(cfg, "which", "best"),
                                normalize=getattr(cfg, "normalize", None))


def load_checkpoint_model(cfg: argparse.Namespace, device: torch.device):
    """The model and input size of ``--checkpoint`` / ``--weights`` / ``--onnx``; fills
    ``--lfw_flip``/``--distance`` left unset from the checkpoint's training settings."""
    model, info = load_evaluated_model(cfg, device)
    image_size = cfg.image_size or info["image_size"]
    if cfg.lfw_flip is None:  # validate as training did, unless told otherwise
        cfg.lfw_flip = info["flip"]
    cfg.distance = cfg.distance or info["distance"]
    saved = info["lfw_threshold"]
    logger.info("model %s: %s, %d-d embedding, %d px input%s", info["source"],
                model.architecture, model.embedding_dim, image_size,
                f", threshold saved in training {saved:.4f}" if saved is not None else "")
    return model, image_size


def evaluate_checkpoint(cfg: argparse.Namespace, runtime: Runtime) -> VerificationResult:
    """Embed the images of the pairs set with the checkpoint's model on ``runtime``, then the
    protocol."""
    model, image_size = load_checkpoint_model(cfg, runtime.device)
    evaluator = create_pairs_evaluator(model, cfg.lfw, runtime, image_size, cfg.lfw_pairs,
                                       cfg.lfw_batch_size, cfg.lfw_flip, cfg.distance,
                                       cfg.lfw_skip_missing, cfg.num_workers)
    return evaluator.run()


def evaluate_targets(cfg: argparse.Namespace, runtime: Runtime, output_dir: str
                     ) -> dict[str, VerificationResult]:
    """``--lfw`` (named ``lfw``) and each ``--val_targets`` with the checkpoint's model: every
    target is read first (a bad one fails before any embedding), then each is evaluated, its
    line printed (name, accuracy, TAR@FAR, AUC ...) and its ROC PNG written."""
    lfw = (cfg.lfw, cfg.lfw_pairs) if cfg.lfw or cfg.lfw_pairs else None
    specs = plan_targets(cfg.val_targets, lfw, cfg.lfw_skip_missing, cfg.val_pairs)
    targets = [spec.load(check_images=False) for spec in specs]
    model, image_size = load_checkpoint_model(cfg, runtime.device)
    stem = os.path.splitext(os.path.basename(os.path.normpath(model_source(cfg))))[0]
    results: dict[str, VerificationResult] = {}
    width = max(len(t.name) for t in targets)
    for target in targets:
        result = create_target_evaluator(model, target, runtime, image_size,
                                         cfg.lfw_batch_size, cfg.lfw_flip, cfg.distance,
                                         cfg.num_workers).run()
        results[target.name] = result
        save_roc_curve(result, os.path.join(output_dir, f"roc_{target.name}.png"),
                       f"{stem} on {target.name} ({os.path.basename(target.path)})")
        skipped = f" | {result.skipped_pairs} pairs skipped" if result.skipped_pairs else ""
        print(f"{target.name:<{width}}  {result.summary()} | {result.num_pairs} pairs{skipped}",
              flush=True)
    return results


def evaluation_session(cfg: argparse.Namespace):
    """The command's output folder (``--output_dir``/evaluate-<time>, or ``--name``), with its
    options in ``config.json``."""
    return session("evaluate", cfg.output_dir, device=cfg.device, amp=cfg.amp,
                   seed=getattr(cfg, "seed", 0), run_name=getattr(cfg, "name", None),
                   config=vars(cfg))


@exits_on_error
def main(argv: Sequence[str] | None = None
         ) -> VerificationResult | dict[str, VerificationResult]:
    """Parse ``argv``, evaluate, print the table; writes the ROC PNG and ``metrics.json``.
    With ``--val_targets``: one line and one ROC PNG per target; returns the results by name."""
    parser = get_args_parser()
    cfg = parser.parse_args(argv)
    check_weights_options(parser, cfg)
    model_file = model_source(cfg)
    if cfg.embeddings and not cfg.names:
        parser.error("--embeddings needs --names (one 'Name/Name_000i' per row)")
    if cfg.embeddings and not (cfg.lfw_pairs or cfg.lfw):
        parser.error("--embeddings needs --lfw_pairs FILE (or --lfw DIR holding pairs.txt)")
    if cfg.embeddings and cfg.val_targets:
        parser.error("--val_targets needs --checkpoint (its images are embedded by the model)")
    if model_file and not (cfg.lfw or cfg.lfw_pairs or cfg.val_targets):
        parser.error("--checkpoint/--weights/--onnx need --lfw DIR (the folder of person "
                     "folders) or --val_targets")
    if cfg.embeddings:
        cfg.distance = cfg.distance or "l2"
    if cfg.val_targets:
        plan_targets(cfg.val_targets, (cfg.lfw, cfg.lfw_pairs) if cfg.lfw or cfg.lfw_pairs
                     else None, val_pairs=cfg.val_pairs)  # missing files, clashing names:
        # one line, before any work
        with evaluation_session(cfg) as run:
            results = evaluate_targets(cfg, Runtime.create(run.device, cfg.amp),
                                       run.output_dir)
            with open(os.path.join(run.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
                json.dump({"source": model_file, "distance": cfg.distance,
                           "flip": bool(cfg.lfw_flip),
                           "targets": {name: {"pairs_file": r.pairs_file, **r.metrics(name),
                                              "fold_accuracies": r.fold_accuracies.tolist()}
                                       for name, r in results.items()}}, f, indent=2)
            print(f"ROC curves  {run.output_dir}/roc_<target>.png", flush=True)
        return results
    with evaluation_session(cfg) as run:
        if cfg.embeddings:
            result, source = evaluate_embeddings_file(cfg), cfg.embeddings
        else:
            result = evaluate_checkpoint(cfg, Runtime.create(run.device, cfg.amp))
            source = model_file
        stem = os.path.splitext(os.path.basename(os.path.normpath(source)))[0]  # "run/" too
        png = save_roc_curve(result, os.path.join(run.output_dir, f"roc_{stem}.png"),
                             f"{stem} on {os.path.basename(result.pairs_file)}")
        with open(os.path.join(run.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump({"source": source, "pairs_file": result.pairs_file,
                       "distance": result.distance, "flip": bool(cfg.lfw_flip and model_file),
                       **result.metrics(), "fold_accuracies": result.fold_accuracies.tolist()},
                      f, indent=2)
        print(f"{source}\n{result.table()}\nROC curve   {png}", flush=True)
        logger.info("%s | %s", stem, result.summary())
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
