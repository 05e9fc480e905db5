"""ONNX export of the embedding model: ONNX Runtime's output matches PyTorch's within 1e-4 for
any batch size, and the file records the normalisation the network was trained with, so that
``faceignite.evaluate --onnx`` scores it as its checkpoint.  One export serves every test (the
dynamo exporter costs 1-2 CPU-s a network)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import evaluate_on, installed, lfw_subset
from faceignite.data import eval_transform
from faceignite.data.dataset import read_rgb
from faceignite.errors import FaceIgniteError
from faceignite.models import build_model
from faceignite.onnx_export import check_onnx, main, onnx_embed

pytestmark = pytest.mark.skipif(not installed("onnx", "onnxscript", "onnxruntime"),
                                reason="pip install onnx onnxscript onnxruntime")

SIZE, DIM = 112, 32


def face_batch(root: Path, n: int) -> torch.Tensor:
    """``n`` images of the synthetic JPEG faces, decoded and normalised as for evaluation."""
    paths = sorted(root.glob("*/*.jpg"))[:: 7][:n]
    transform = eval_transform(SIZE)
    return torch.stack([transform(image=read_rgb(str(p)))["image"] for p in paths])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path, str]:
    """The tiny network with non-trivial BatchNorm statistics, trained (its checkpoint says)
    with facenet-pytorch's normalisation, exported once: (model, checkpoint, ONNX file)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(1)
    model = build_model("tiny", DIM)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, SIZE, SIZE))
    checkpoint = folder / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "tiny",
                "embedding_dimension": DIM, "image_size": SIZE,
                "config": {"normalize": "facenet", "image_size": SIZE}}, checkpoint)
    out = main(["--checkpoint", str(checkpoint), "--out", str(folder / "tiny.onnx")])
    return model.eval(), checkpoint, out


def test_onnx_export_matches_pytorch_for_any_batch_size(exported, synthetic_root):
    model, _, out = exported
    for n in (1, 5):  # dynamic batch axis
        images = face_batch(synthetic_root[0], n)
        assert check_onnx(model, out, images, atol=1e-4) < 1e-4
        embeddings = onnx_embed(out, images.numpy())
        assert embeddings.shape == (n, DIM)
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)  # normalised
    other = build_model("tiny", DIM).eval()  # other weights: the check must refuse
    with pytest.raises(FaceIgniteError, match="differ from PyTorch's"):
        check_onnx(other, out, face_batch(synthetic_root[0], 2))


def test_our_onnx_export_records_its_normalisation(exported, tmp_path):
    from faceignite.eval_models import read_metadata

    _, checkpoint, out = exported
    recorded = read_metadata(out)
    assert recorded["normalize"] == "facenet" and recorded["std"] == [128.0] * 3
    lfw = lfw_subset(tmp_path, per_fold=5)
    from_onnx = evaluate_on(tmp_path, lfw, "--onnx", out)
    from_checkpoint = evaluate_on(tmp_path, lfw, "--checkpoint", str(checkpoint))
    assert from_onnx.auc == pytest.approx(from_checkpoint.auc, abs=1e-6)
