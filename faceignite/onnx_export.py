"""ONNX export of the embedding model (normalised output, dynamic batch), checked with ONNX Runtime.

    python -m faceignite.onnx_export --checkpoint runs/x/best_checkpoint_....pt --out model.onnx

The graph maps ``images`` (N x 3 x S x S float32, RGB normalised as in training: see
``faceignite.data.transforms``) to ``embeddings`` (N x D, L2-normalised): ``model.embed``.
The normalisation (name, mean, std in pixel units) is recorded in the graph's metadata
(``faceignite.input``), where ``python -m faceignite.evaluate --onnx`` reads it.
Needs ``pip install onnx onnxscript`` (torch's exporter); the check needs ``onnxruntime``.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from faceignite.cli import exits_on_error
from faceignite.errors import FaceIgniteError
from faceignite.output_files import prepare_output_file, write_atomic

logger = logging.getLogger("faceignite")
INPUT, OUTPUT = "images", "embeddings"


class NormalizedEmbedding(nn.Module):
    """``model.embed`` as a module's ``forward``: what the ONNX graph computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise FaceIgniteError(f"ONNX export needs {', '.join(missing)}: "
                              f"pip install {' '.join(missing)}")


def export_onnx(model: nn.Module, path: str, image_size: int, opset: int = 18) -> str:
    """Write ``model.embed`` (eval mode, CPU, float32) to ``path`` with a dynamic batch axis."""
    _require("onnx", "onnxscript")
    wrapped = NormalizedEmbedding(model).cpu().float().eval()
    example = torch.randn(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = prepare_output_file(path, "--out")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter's deprecation and tracing chatter
        program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"images": {0: batch}})
    from faceignite.data.normalization import of_model
    from faceignite.eval_models import write_metadata

    def save(tmp: str) -> None:
        program.save(tmp, external_data=False)
        write_metadata(tmp, of_model(model), image_size)

    write_atomic(path, save, "--out")
    logger.info("ONNX model (opset %d, input %s: N x 3 x %d x %d) written to %s", opset, INPUT,
                image_size, image_size, path)
    return path


def onnx_embed(path: str, images: np.ndarray) -> np.ndarray:
    """Run the exported graph on ``images`` with ONNX Runtime (CPU)."""
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(images, dtype=np.float32)})[0]


def check_onnx(model: nn.Module, path: str, images: torch.Tensor, atol: float = 1e-4) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's embeddings of ``images``;
    raises :class:`FaceIgniteError` when it exceeds ``atol``."""
    model = model.cpu().float().eval()
    with torch.no_grad():
        expected = model.embed(images.cpu().float()).numpy()
    diff = float(np.abs(onnx_embed(path, images.numpy()) - expected).max())
    if diff > atol:
        raise FaceIgniteError(f"{path}: ONNX Runtime's embeddings differ from PyTorch's by {diff:.2e}"
                              f" (> {atol:g}); do not use this export")
    return diff


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceignite.onnx_export",
                                description="Export the embedding model of a checkpoint to ONNX")
    p.add_argument("--checkpoint", required=True,
                   help="Training checkpoint (.pt), run folder, or exported model folder")
    p.add_argument("--out", required=True, help="Output .onnx file")
    p.add_argument("--image_size", type=int, default=None,
                   help="Input size (default: the checkpoint's)")
    p.add_argument("--normalize", type=str, default=None,
                   help="Input normalisation recorded in the file (default: the one the model "
                        "was trained with)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--no_check", action="store_true",
                   help="Skip the ONNX Runtime comparison (done when onnxruntime is installed)")
    return p


@exits_on_error
def main(argv: Sequence[str] | None = None) -> str:
    from faceignite.embed import load_inference_model

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    prepare_output_file(args.out, "--out")  # before the export: a bad path fails at once
    model, info = load_inference_model(args.checkpoint, "cpu", normalize=args.normalize)
    size = args.image_size or info["image_size"]
    export_onnx(model, args.out, size, args.opset)
    if args.no_check:
        pass
    elif importlib.util.find_spec("onnxruntime") is None:
        logger.warning("onnxruntime not installed: export not checked "
                       "(pip install onnxruntime)")
    else:
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        logger.info("ONNX Runtime matches PyTorch: max |difference| %.2e",
                    check_onnx(model, args.out, images))
    print(args.out)
    return args.out


if __name__ == "__main__":
    main(sys.argv[1:])
