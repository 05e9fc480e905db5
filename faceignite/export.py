"""Export the embedding model alone (weights + a small JSON) from a checkpoint, and load it back.

    python -m faceignite.export --checkpoint runs/x/best_checkpoint_9_lfw_accuracy=0.95.pt --out m/
    python -m faceignite.export --checkpoint CKPT --format insightface --out model.pt   # r18…r200, mbf
    model = load_embedding_model("m/")      # the network in eval mode; model.embed(images)

The folder holds ``embedding_model.pt`` (the network's state dict, weights only) and
``embedding_model.json`` (architecture, embedding size, input size and normalisation, distance,
LFW threshold and metrics of the checkpoint, SHA-256 of the weights).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
from typing import Any, Mapping, Sequence

import torch

from faceignite import __version__
from faceignite.checkpoint import load_checkpoint, safe_load
from faceignite.data.normalization import Normalization, of_checkpoint_config, of_export
from faceignite.cli import exits_on_error
from faceignite.config import add_options
from faceignite.errors import FaceIgniteError
from faceignite.models import EmbeddingModel, build_model
from faceignite.output_files import prepare_output_file, write_atomic

logger = logging.getLogger("faceignite")

FORMAT = "faceignite-embedding-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "embedding_model.pt"
CONFIG_FILE = "embedding_model.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def model_from_weights(architecture: str, embedding_dim: int, weights: Mapping,
                       source: str, normalization: Normalization | None = None) -> EmbeddingModel:
    """The embedding network of ``architecture`` (any in :data:`faceignite.models.ARCHITECTURES`)
    in eval mode holding ``weights``; one clear error if they do not fit.  ``normalization``:
    the input convention it was trained with (default: the architecture's own)."""
    model = build_model(architecture, int(embedding_dim))
    if normalization is not None:
        model.normalization = normalization
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        from faceignite.models.registry import SPECS, canonical
        from faceignite.models.weight_files import identify

        found = identify(weights)
        if found and SPECS.get(found[0]) and canonical(found[0]) != canonical(architecture):
            raise FaceIgniteError(f"{source}: weights do not fit {architecture}: this file holds "
                                  f"{found[1]}: use --model {found[0]}") from None
        raise FaceIgniteError(f"{source}: weights do not fit {architecture} with embedding size "
                              f"{embedding_dim}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def validation_settings(ckpt: Mapping) -> dict[str, Any]:
    """What a threshold of ``ckpt`` belongs to: ``image_size``, ``distance``, ``lfw_flip`` and
    ``lfw_threshold`` (None when no LFW validation ran), from the checkpoint and its options."""
    config = ckpt.get("config") or {}
    return {"image_size": ckpt.get("image_size") or config.get("image_size"),
            "distance": config.get("distance") or "l2",
            "lfw_flip": bool(config.get("lfw_flip", False)),
            "lfw_threshold": ckpt.get("lfw_threshold")}


def export_embedding_model(checkpoint: str | Mapping, out_dir: str, which: str = "best") -> str:
    """Write the embedding model of ``checkpoint`` (a path, a run folder or a loaded dict) to
    ``out_dir``: ``embedding_model.pt`` + ``embedding_model.json``.  Returns ``out_dir``."""
    ckpt = (load_checkpoint(checkpoint, option="--checkpoint", which=which)
            if isinstance(checkpoint, (str, os.PathLike)) else checkpoint)
    source = str(ckpt.get("path", "checkpoint"))
    normalization = of_checkpoint_config(ckpt.get("config"))
    model = model_from_weights(ckpt["model_architecture"], ckpt["embedding_dimension"],
                               ckpt["model_state_dict"], source, normalization)
    weights = prepare_output_file(os.path.join(out_dir, WEIGHTS_FILE), "--out")
    buffer = io.BytesIO()  # serialised first: torch.save's own writer hides "no space left"
    torch.save(model.state_dict(), buffer)
    write_atomic(weights, lambda tmp: _write_bytes(tmp, buffer.getvalue()), "--out")
    metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items()
               if k.startswith(("lfw_", "val_"))}
    settings = validation_settings(ckpt)
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "faceignite_version": __version__,
        "architecture": ckpt["model_architecture"],
        "embedding_dim": int(ckpt["embedding_dimension"]),
        "image_size": settings["image_size"],
        "input": {"color": "RGB", "normalise": "(pixel / 255 - mean) / std",
                  "mean": list(normalization.unit_mean()), "std": list(normalization.unit_std()),
                  "normalize": normalization.name, "layout": "NCHW float32",
                  "crop": "aligned face, resized"},
        "output": "L2-normalised embedding: model.embed(images)",
        "distance": settings["distance"],
        "lfw_flip": settings["lfw_flip"],
        "lfw_threshold": settings["lfw_threshold"],
        "metrics": metrics,
        "trained": {"checkpoint": source, "epoch": ckpt.get("epoch"),
                    "iteration": ckpt.get("iteration"), "num_classes": ckpt.get("num_classes")},
        "weights": WEIGHTS_FILE, "sha256": _sha256(weights),
    }
    text = json.dumps(info, indent=2).encode("utf-8")
    write_atomic(os.path.join(out_dir, CONFIG_FILE), lambda tmp: _write_bytes(tmp, text), "--out")
    logger.info("embedding model of %s exported to %s", source, out_dir)
    return out_dir


def load_embedding_model(path: str, device: str | torch.device = "cpu") -> EmbeddingModel:
    """Load an exported model (its folder, JSON or .pt file) in eval mode on ``device``.

    ``model.export_config`` holds the JSON (input size, normalisation, threshold, ...).
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(config_path, encoding="utf-8") as f:
            info: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise FaceIgniteError(f"no exported model at {path}: {CONFIG_FILE} missing (export one "
                              f"with python -m faceignite.export --checkpoint CKPT --out DIR)"
                              ) from None
    except ValueError as exc:
        raise FaceIgniteError(f"{config_path} is not valid JSON: {exc}") from None
    if info.get("format") != FORMAT:
        raise FaceIgniteError(f"{config_path} is not a faceignite embedding model "
                              f"(format {info.get('format')!r})")
    weights = os.path.join(folder, info.get("weights", WEIGHTS_FILE))
    if not os.path.isfile(weights):
        raise FaceIgniteError(f"weights file missing: {weights}")
    if info.get("sha256") and _sha256(weights) != info["sha256"]:
        raise FaceIgniteError(f"{weights} does not match {config_path} (SHA-256 differs): "
                              f"corrupt or replaced; export again")
    model = model_from_weights(info["architecture"], info["embedding_dim"], safe_load(weights),
                               weights, of_export(info))
    model.export_config = info
    return model.to(device)


def export_field_backbone(checkpoint: str | Mapping, out_file: str, which: str = "best") -> str:
    """Write the network of ``checkpoint`` as the field's own file: an arcface_torch backbone
    file (``get_model(name).load_state_dict(torch.load(out_file), strict=True)``) for r18 … r200
    and mbf, a facenet-pytorch state dict for inception_resnet_v1.  Returns ``out_file``."""
    from faceignite.models import weight_files
    from faceignite.models.registry import spec

    ckpt = (load_checkpoint(checkpoint, option="--checkpoint", which=which)
            if isinstance(checkpoint, (str, os.PathLike)) else checkpoint)
    architecture = ckpt["model_architecture"]
    family = spec(architecture).family
    if family not in weight_files.PREFIXES:
        raise FaceIgniteError(f"--format insightface: {architecture} has no insightface / "
                              f"facenet-pytorch counterpart (r18, r34, r50, r100, r200, mbf, "
                              f"inception_resnet_v1 have); use the default --format folder")
    source = str(ckpt.get("path", "checkpoint"))
    model = model_from_weights(architecture, ckpt["embedding_dimension"],
                               ckpt["model_state_dict"], source)
    state = weight_files.to_field(family, model.state_dict())
    out_file = prepare_output_file(out_file, "--out")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(out_file, lambda tmp: _write_bytes(tmp, buffer.getvalue()), "--out")
    logger.info("%s of %s written in the field's format to %s (input: %s normalisation)",
                architecture, source, out_file, of_checkpoint_config(ckpt.get("config")).name)
    return out_file


@exits_on_error
def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Export the embedding model of a checkpoint")
    parser.add_argument("--checkpoint", required=True,
                        help="A training/best checkpoint, or a run folder (its best: --which)")
    add_options(parser, ("which",))
    parser.add_argument("--out", required=True,
                        help="Output folder (--format folder) or .pt file (--format insightface)")
    parser.add_argument("--format", choices=("folder", "insightface"), default="folder",
                        help="folder: faceignite's weights + JSON (default); insightface: the "
                             "backbone file arcface_torch's get_model(name) loads strictly "
                             "(facenet-pytorch's state dict for inception_resnet_v1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.format == "insightface":
        out = export_field_backbone(args.checkpoint, args.out, args.which)
        print(out)
        return out
    out = export_embedding_model(args.checkpoint, args.out, args.which)
    print(os.path.join(out, CONFIG_FILE))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
