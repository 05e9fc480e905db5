"""Embed a folder of face images with a trained model: a ``.npy`` array plus the list of names.

    python -m faceignite.embed --checkpoint runs/x/best_checkpoint_....pt faces/ --out faces.npy

writes ``faces.npy`` (one L2-normalised float32 row per image) and ``faces.txt`` (its relative
path, one per row, e.g. ``Name/Name_0001.jpg``).  The pair is what
``python -m faceignite.evaluate --embeddings faces.npy --names faces.txt`` reads.  Images go
through the same pipeline as LFW validation (OpenCV decode, resize, normalise, ``model.embed``,
flip TTA when the run validated with ``--lfw_flip``); give aligned crops, like the training data.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch
from ignite.engine import Events

from faceignite.checkpoint import latest_checkpoint, load_checkpoint
from faceignite.data.index import IMAGE_EXTENSIONS, list_images
from faceignite.config import add_options, add_runtime_args
from faceignite.runtime import Runtime, resolve_device
from faceignite.cli import exits_on_error
from faceignite.errors import FaceIgniteError
from faceignite.export import (CONFIG_FILE, WEIGHTS_FILE, load_embedding_model, model_from_weights,
                               validation_settings)
from faceignite.data.normalization import of_checkpoint_config, of_model, parse_normalize
from faceignite.verification.evaluator import create_embedding_engine, image_loader
from faceignite.models import EmbeddingModel
from faceignite.output_files import prepare_output_file, write_atomic

logger = logging.getLogger("faceignite")
DEFAULT_IMAGE_SIZE = 160


def _is_export(path: str) -> bool:
    """A folder (or one of its two files) written by ``python -m faceignite.export``."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, CONFIG_FILE))
    return os.path.basename(path) in (CONFIG_FILE, WEIGHTS_FILE)


def _check_folder(path: str, option: str) -> None:
    """A folder given as a model must be a run folder or an export with its JSON."""
    if not os.path.isdir(path) or _is_export(path) or latest_checkpoint(path) is not None:
        return
    if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        raise FaceIgniteError(f"exported model folder {path} has {WEIGHTS_FILE} but no "
                              f"{CONFIG_FILE}: export it again (python -m faceignite.export "
                              f"--checkpoint CKPT --out DIR) and pass that folder to {option}")
    raise FaceIgniteError(f"{path} holds no training_checkpoint_<iteration>.pt and no exported "
                          f"model ({CONFIG_FILE}): pass a checkpoint file, a run folder or an "
                          f"exported model folder to {option}")


def load_inference_model(path: str, device: str | torch.device = "cpu",
                         option: str = "--checkpoint", which: str = "best",
                         normalize: str | None = None
                         ) -> tuple[EmbeddingModel, dict[str, Any]]:
    """``(model in eval mode, info)`` from a training checkpoint (file, or run folder → its
    ``which``: best, said in the log, or latest) or a folder written by
    ``python -m faceignite.export``.

    ``info``: ``image_size``, ``lfw_threshold`` (None when no LFW validation ran), ``distance``
    and ``flip`` (the LFW validation's settings, which the threshold belongs to), ``source``.
    ``option`` (the caller's command-line option) is named in the advice of an error;
    ``normalize`` (``--normalize``) replaces the input convention the model was trained with.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    _check_folder(path, option)
    if _is_export(path):
        model = load_embedding_model(path, device)
        saved = model.export_config  # validation_settings(checkpoint), written at export
    else:
        ckpt = load_checkpoint(path, option=option, which=which)
        model = model_from_weights(ckpt["model_architecture"], ckpt["embedding_dimension"],
                                   ckpt["model_state_dict"], ckpt["path"],
                                   of_checkpoint_config(ckpt.get("config"))).to(device)
        saved, path = validation_settings(ckpt), ckpt["path"]
    if normalize:
        model.normalization = parse_normalize(normalize)
    info = {"image_size": saved.get("image_size"), "lfw_threshold": saved.get("lfw_threshold"),
            "distance": saved.get("distance") or "l2", "flip": bool(saved.get("lfw_flip", False))}
    threshold = info["lfw_threshold"]
    info["lfw_threshold"] = None if threshold is None else float(threshold)
    info["image_size"] = int(info["image_size"] or getattr(model, "input_size", None)
                             or DEFAULT_IMAGE_SIZE)
    info["source"] = path
    return model, info


def images_to_embed(root: str) -> list[str]:
    """Image files under ``root`` (recursively, sorted), as paths relative to ``root``; one
    clear error when the folder is missing or holds none."""
    if not os.path.isdir(root):
        raise FaceIgniteError(f"images folder not found: {root}")
    found = list_images(root)
    if not found:
        raise FaceIgniteError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {root}")
    return found


def embed_images(model: EmbeddingModel, paths: Sequence[str], image_size: int,
                 runtime: Runtime | str | torch.device = "cpu", batch_size: int = 64,
                 flip: bool = False, num_workers: int = 0) -> tuple[np.ndarray, list[int]]:
    """``(embeddings, rows)``: L2-normalised float32 embeddings of the images that decode, and
    their positions in ``paths`` (undecodable files are skipped and logged), computed on
    ``runtime`` (a :class:`~faceignite.runtime.Runtime`, or a device for fp32)."""
    runtime = Runtime.of(runtime)
    engine = create_embedding_engine(model, runtime, flip)
    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []

    @engine.on(Events.ITERATION_COMPLETED)
    def collect(e) -> None:
        embeddings, index = e.state.output
        if index.numel():
            chunks.append((embeddings, index))

    engine.run(image_loader(list(paths), image_size, batch_size, num_workers,
                            normalization=of_model(model)))
    if not chunks:
        raise FaceIgniteError(f"none of the {len(paths)} images could be decoded, e.g. {paths[0]}")
    rows = torch.cat([i for _, i in chunks])
    order = torch.argsort(rows)
    embeddings = torch.cat([e for e, _ in chunks])[order].numpy().astype(np.float32)
    return embeddings, rows[order].tolist()


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, array)


def _save_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def names_path(out: str) -> str:
    """The names file written beside ``out``: ``faces.npy`` → ``faces.txt``."""
    return os.path.splitext(out)[0] + ".txt"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceignite.embed",
                                description="Embed every image of a folder with a trained model")
    p.add_argument("images", help="Folder of (aligned) face images, searched recursively")
    p.add_argument("--checkpoint", required=True,
                   help="Training checkpoint (.pt), run folder (its best: --which), or exported "
                        "model folder")
    add_options(p, ("which",))
    p.add_argument("--out", required=True, help="Output .npy; the names go beside it as .txt")
    p.add_argument("--normalize", type=str, default=None,
                   help="Input normalisation: insightface, facenet, imagenet or MEAN,STD in pixel "
                        "units (default: the one the model was trained with)")
    p.add_argument("--image_size", type=int, default=None,
                   help="Input size (default: the checkpoint's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="Flip TTA (default: as the run's LFW validation, --lfw_flip)")
    p.add_argument("--batch_size", type=int, default=64, help="Batch size (default: 64)")
    add_runtime_args(p)
    return p


@exits_on_error
def main(argv: Sequence[str] | None = None) -> tuple[str, str]:
    """Write ``--out`` (.npy) and its names file; return both paths."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    out = prepare_output_file(out, "--out")  # before the work: a bad path fails at once
    prepare_output_file(names_path(out), "--out")
    device = resolve_device(args.device)
    model, info = load_inference_model(args.checkpoint, device, which=args.which,
                                       normalize=args.normalize)
    size = args.image_size or info["image_size"]
    flip = info["flip"] if args.flip is None else args.flip
    names = images_to_embed(args.images)
    paths = [os.path.join(args.images, n) for n in names]
    embeddings, rows = embed_images(model, paths, size, device, args.batch_size, flip)
    listed = "".join(names[r].replace(os.sep, "/") + "\n" for r in rows).encode("utf-8")
    write_atomic(out, lambda tmp: _save_npy(tmp, embeddings), "--out")
    write_atomic(names_path(out), lambda tmp: _save_bytes(tmp, listed), "--out")
    logger.info("%d embeddings (%d-d, %d px%s) of %s written to %s and %s (%d undecodable "
                "skipped)", len(rows), embeddings.shape[1], size, ", flip" if flip else "",
                args.images, out, names_path(out), len(names) - len(rows))
    return out, names_path(out)


if __name__ == "__main__":
    main(sys.argv[1:])
