"""ONNX export of the embedding model: ONNX Runtime's output matches PyTorch's within 1e-4."""
import numpy as np
import pytest
import torch

from faceignite.data import eval_transform
from faceignite.data.dataset import read_rgb
from faceignite.errors import FaceIgniteError
from conftest import installed
from faceignite.models import build_model
from faceignite.onnx_export import check_onnx, main, onnx_embed

pytestmark = pytest.mark.skipif(not installed("onnx", "onnxscript", "onnxruntime"),
                                reason="pip install onnx onnxscript onnxruntime")

SIZE = 32


def face_batch(root, n: int) -> torch.Tensor:
    """``n`` images of the synthetic JPEG faces, decoded and normalised as for evaluation."""
    paths = sorted(root.glob("*/*.jpg"))[:: 7][:n]
    transform = eval_transform(SIZE)
    return torch.stack([transform(image=read_rgb(str(p)))["image"] for p in paths])


def test_onnx_export_matches_pytorch_for_any_batch_size(tmp_path, synthetic_root):
    torch.manual_seed(0)
    model = build_model("tiny", 64).eval()
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "tiny",
                "embedding_dimension": 64, "image_size": SIZE}, checkpoint)
    out = main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "model.onnx")])
    for n in (1, 5):  # dynamic batch axis
        images = face_batch(synthetic_root[0], n)
        assert check_onnx(model, out, images, atol=1e-4) < 1e-4
        embeddings = onnx_embed(out, images.numpy())
        assert embeddings.shape == (n, 64)
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)  # normalised
    other = build_model("tiny", 64).eval()  # other weights: the check must refuse
    with pytest.raises(FaceIgniteError, match="differ from PyTorch's"):
        check_onnx(other, out, face_batch(synthetic_root[0], 2))
