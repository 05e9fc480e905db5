"""``python -m faceignite.evaluate --model NAME --weights FILE`` and ``--onnx FILE``: a bare
weights file and an ONNX embedding model (with or without our metadata, fixed or dynamic batch
axis) evaluate on real LFW crops to the same accuracy and AUC; a faceignite checkpoint from
before ``--normalize`` still evaluates as before (ImageNet normalisation)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import evaluate_on, installed, lfw_subset, one_error
from faceignite.evaluate import main as evaluate
from faceignite.models import build_model

pytestmark = pytest.mark.skipif(not installed("onnxruntime"), reason="pip install onnxruntime")


def lfw_bin(tmp_path: Path, lfw: tuple[str, str]) -> str:
    """The pairs of ``lfw`` as an insightface verification ``.bin`` (JPEG bytes, issame)."""
    import pickle

    from faceignite.verification.pairs import read_pairs, resolve_images

    pairs, paths = resolve_images(read_pairs(lfw[1]), lfw[0], False)
    images, issame = [], []
    for left, right, same in zip(pairs.left, pairs.right, pairs.issame):
        images += [Path(paths[left]).read_bytes(), Path(paths[right]).read_bytes()]
        issame.append(bool(same))
    path = tmp_path / "subset.bin"
    path.write_bytes(pickle.dumps((images, issame), protocol=2))
    return str(path)


def field_style_onnx(model: torch.nn.Module, path: Path, batch: int | None) -> Path:
    """An ONNX file as insightface's torch2onnx.py writes one: raw embedding, no metadata,
    input ``input.1``, batch axis fixed (``batch``) or dynamic (None)."""
    dynamic = {"input.1": {0: "None"}, "fc1": {0: "None"}} if batch is None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(batch or 2, 3, 112, 112),), str(path),
                          dynamo=False, input_names=["input.1"], output_names=["fc1"],
                          dynamic_axes=dynamic)
    return path


def test_weights_and_onnx_give_the_same_accuracy_and_auc(tmp_path):
    lfw = lfw_subset(tmp_path)
    torch.manual_seed(0)
    model = build_model("tiny", 64)
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.randn(8, 3, 112, 112))
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    native = evaluate_on(tmp_path, lfw, "--model", "tiny", "--weights", str(weights),
                         "--normalize", "insightface")
    assert native.num_pairs == 40 and 0 < native.auc < 1
    for batch in (1, None):  # insightface's packs: fixed batch 1, or dynamic
        onnx_file = field_style_onnx(model, tmp_path / f"b{batch}.onnx", batch)
        result = evaluate_on(tmp_path, lfw, "--onnx", str(onnx_file))  # no metadata: insightface's
        assert result.accuracy == pytest.approx(native.accuracy, abs=1e-9)
        assert result.auc == pytest.approx(native.auc, abs=1e-6)
    # --val_targets (.bin) and --lfw_flip: the same pairs as a .bin, both ways equal too
    target = lfw_bin(tmp_path, lfw)
    flip = ["--val_targets", target, "--lfw_flip"]
    by_weights = evaluate(["--model", "tiny", "--weights", str(weights), "--normalize",
                           "insightface", *flip, "--device", "cpu",
                           "--output_dir", str(tmp_path / "out")])["subset"]
    by_onnx = evaluate(["--onnx", str(tmp_path / "b1.onnx"), *flip, "--device", "cpu",
                        "--output_dir", str(tmp_path / "out")])["subset"]
    assert by_onnx.num_pairs == 40 and by_onnx.auc == pytest.approx(by_weights.auc, abs=1e-6)
    assert by_onnx.accuracy == pytest.approx(by_weights.accuracy, abs=1e-9)
    # the normalisation matters: ImageNet's gives other embeddings
    other = evaluate_on(tmp_path, lfw, "--onnx", str(tmp_path / "bNone.onnx"),
                        "--normalize", "imagenet")
    assert other.auc != pytest.approx(native.auc, abs=1e-6)


def test_a_checkpoint_from_before_normalize_evaluates_as_before(tmp_path):
    """No ``normalize`` in its options: trained with ImageNet's; evaluated with it."""
    lfw = lfw_subset(tmp_path, per_fold=3)
    torch.manual_seed(2)
    model = build_model("mobilefacenet", 128)  # insightface's convention by default now
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 112, 112))
    ckpt = tmp_path / "old.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "mobilefacenet",
                "embedding_dimension": 128, "image_size": 112,
                "config": {"image_size": 112, "model": "mobilefacenet"}}, ckpt)
    old = evaluate_on(tmp_path, lfw, "--checkpoint", str(ckpt))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    as_imagenet = evaluate_on(tmp_path, lfw, "--model", "mobilefacenet",
                              "--weights", str(weights), "--normalize", "imagenet")
    as_insightface = evaluate_on(tmp_path, lfw, "--model", "mobilefacenet",
                                 "--weights", str(weights))
    assert old.auc == pytest.approx(as_imagenet.auc, abs=1e-9)
    assert old.auc != pytest.approx(as_insightface.auc, abs=1e-6)


def test_weights_needs_model_and_a_fitting_file(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as exit_:
        evaluate(["--weights", str(tmp_path / "x.pt"), "--lfw", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--weights needs --model" in capsys.readouterr().err
    weights = tmp_path / "mbf.pt"
    torch.save(build_model("mobilefacenet", 128).state_dict(), weights)
    lfw = lfw_subset(tmp_path, per_fold=1, folds=1)
    with pytest.raises(SystemExit) as exit_:
        evaluate_on(tmp_path, lfw, "--model", "mbf", "--weights", str(weights))
    assert exit_.value.code == 2
    line = one_error(caplog)
    assert "mbf.pt: weights do not fit mbf" in line and "use --model mobilefacenet" in line
