"""Any model for the evaluators, without a faceignite checkpoint.

    model = weights_model("r50", "model.pt")          # an arcface_torch / facenet-pytorch / faceignite file
    model = onnx_model("w600k_r50.onnx")              # any ONNX embedding model, via ONNX Runtime

Both return an ``nn.Module`` with ``forward`` (raw embedding), ``embed`` (L2-normalised),
``architecture``, ``embedding_dim``, ``input_size`` (pixels) and ``normalization`` (its input
convention: ``--normalize``, else the ONNX file's metadata, else the architecture's own;
insightface's for an ONNX file without metadata), so the LFW, ``--val_targets`` and IJB
evaluators run them as they run a checkpoint's model.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceignite.data.normalization import NAMED, Normalization, of_export, parse_normalize
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
METADATA_KEY = "faceignite.input"  # ONNX metadata_props: the input convention, JSON


def weights_model(architecture: str, weights: str, embedding_dim: int | None = None,
                  normalize: str | None = None) -> nn.Module:
    """``architecture`` holding the weights file ``weights`` (every tensor of the network, head
    included), eval mode; the embedding size is the file's unless given."""
    from faceignite.models import build_model
    from faceignite.models.registry import spec
    from faceignite.models.resnet import read_weights_file
    from faceignite.models.weight_files import head_dim

    facts = spec(architecture)
    if not os.path.isfile(weights):
        raise FaceIgniteError(f"--weights file not found: {weights}")
    state = read_weights_file(weights)
    dim = embedding_dim or head_dim(facts.family, state) or facts.embedding_dim
    if any(k.startswith("embedding.") for k in state):  # faceignite's whole network
        from faceignite.data.normalization import resolve
        from faceignite.export import model_from_weights

        return model_from_weights(architecture, dim, state, weights,
                                  resolve(normalize, architecture)).eval()
    try:
        return build_model(architecture, dim, weights, normalize=normalize).eval()
    except FaceIgniteError as exc:  # the loader speaks of --pretrained; here it is --weights
        raise FaceIgniteError(str(exc).replace("--pretrained", "--weights")) from None


def read_metadata(path: str) -> dict[str, Any]:
    """The input convention an ONNX file records under :data:`METADATA_KEY` ({} when none)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except ValueError:
                return {}
    return {}


def write_metadata(path: str, normalization: Normalization, image_size: int) -> None:
    """Record ``normalization`` (and the input size) in the ONNX file at ``path``."""
    import onnx

    model = onnx.load(path)
    entry = {**normalization.metadata(), "image_size": int(image_size)}
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(entry))
    onnx.save(model, path)


class OnnxEmbedding(nn.Module):
    """An ONNX embedding model run by ONNX Runtime on the CPU: N×3×S×S float32 → N×D.

    A fixed batch axis (e.g. 1) is served in chunks of that size, the last one padded."""

    def __init__(self, path: str, normalization: Normalization):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise FaceIgniteError("--onnx needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise FaceIgniteError(f"--onnx {path} is not a readable ONNX model: "
                                  f"{str(exc).splitlines()[0]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or len(shape) != 4 or not isinstance(shape[2], int):
            raise FaceIgniteError(f"--onnx {path}: expected one N x 3 x H x W image input with a "
                                  f"fixed size, got {[(i.name, i.shape) for i in inputs]}")
        self.path, self.input_name, self.output_name = path, inputs[0].name, outputs[0].name
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_size = int(shape[2])
        dim = outputs[0].shape[-1]
        self.embedding_dim = int(dim) if isinstance(dim, int) else 0
        self.architecture = f"onnx:{os.path.basename(path)}"
        self.normalization = normalization

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        if self.batch is None:
            out = self._run(x)
        else:
            parts = []
            for start in range(0, len(x), self.batch):
                chunk = x[start:start + self.batch]
                pad = self.batch - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self._run(chunk)[: self.batch - pad])
            out = np.concatenate(parts)
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(x), -1)).to(
            images.device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(images), dim=1)


def onnx_model(path: str, normalize: str | None = None) -> OnnxEmbedding:
    """The ONNX file at ``path``; input convention: ``normalize``, else its metadata, else
    insightface's (how insightface's packs expect their input)."""
    if not os.path.isfile(path):
        raise FaceIgniteError(f"--onnx file not found: {path}")
    if normalize:
        normalization = parse_normalize(normalize)
    else:
        try:
            recorded = read_metadata(path)
        except Exception:  # noqa: BLE001 - onnx missing or unreadable: onnxruntime decides
            recorded = {}
        normalization = of_export(recorded) if recorded else NAMED["insightface"]
    model = OnnxEmbedding(path, normalization)
    logger.info("ONNX model %s: %d px input, %s-d output, batch axis %s, --normalize %s", path,
                model.input_size, model.embedding_dim or "?", model.batch or "dynamic",
                normalization.name)
    return model
