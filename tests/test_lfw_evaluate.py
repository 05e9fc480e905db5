"""``python -m faceignite.evaluate``: precomputed embeddings, checkpoints, errors, a published model."""
from __future__ import annotations

import json
import logging
import os
import re
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from faceignite.evaluate import main
from faceignite.verification import create_pairs_evaluator
from faceignite.models import build_model

CONTRACT = ("lfw_accuracy", "lfw_accuracy_std", "lfw_threshold", "lfw_val_far1e-3",
            "lfw_val_far1e-2", "lfw_auc", "lfw_eer")


@pytest.fixture
def embeddings_set(tmp_path):
    """A pairs file (10 folds x 20 + 20) with separable embeddings for its 800 images."""
    rng = np.random.default_rng(0)
    lines, names, rows = ["10\t20"], [], []
    for fold in range(10):
        for k in range(20):
            lines.append(f"S{fold}_{k}\t1\t2")
            base = rng.normal(size=32)
            names += [f"S{fold}_{k}/S{fold}_{k}_0001.jpg", f"S{fold}_{k}/S{fold}_{k}_0002"]
            rows += [base + 0.05 * rng.normal(size=32), base + 0.05 * rng.normal(size=32)]
        for k in range(20):
            lines.append(f"A{fold}_{k}\t1\tB{fold}_{k}\t1")
            names += [f"A{fold}_{k}/A{fold}_{k}_0001", f"B{fold}_{k}/B{fold}_{k}_0001"]
            rows += [rng.normal(size=32), rng.normal(size=32)]
    order = rng.permutation(len(rows))  # row order is the names file's, not the pairs file's
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "emb.npy", np.array(rows, dtype=np.float32)[order])
    (tmp_path / "names.txt").write_text("\n".join(np.array(names)[order]) + "\n")
    return tmp_path


def run_dir(output: str) -> str:
    (found,) = [os.path.join(output, d) for d in os.listdir(output) if d.startswith("evaluate-")]
    return found


def test_embeddings_mode_prints_table_distance_and_writes_roc(embeddings_set, tmp_path, capsys):
    out = str(tmp_path / "runs")
    result = main(["--embeddings", str(embeddings_set / "emb.npy"), "--names",
                   str(embeddings_set / "names.txt"), "--lfw_pairs", str(embeddings_set / "pairs.txt"),
                   "--output_dir", out, "--distance", "cosine"])
    assert result.accuracy == 1.0 and result.auc == 1.0 and result.num_images == 800
    printed = capsys.readouterr().out
    assert "accuracy         100.00 % ± 0.00" in printed
    assert "cosine distance (1 - cosine similarity) between L2-normalised embeddings" in printed
    folder = run_dir(out)
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    assert metrics["distance"] == "cosine" and all(k in metrics for k in CONTRACT)
    png = cv2.imread(os.path.join(folder, "roc_emb.png"))
    assert png is not None and png.std() > 10


def test_as_a_module_from_the_command_line(embeddings_set, tmp_path, monkeypatch, capsys):
    """``python -m faceignite.evaluate``, run as ``__main__`` in this process (no second import
    of torch; console scripts as real processes: tests/test_console_scripts.py)."""
    monkeypatch.setattr(sys, "argv", [
        "faceignite.evaluate", "--embeddings", str(embeddings_set / "emb.npy"),
        "--names", str(embeddings_set / "names.txt"), "--lfw", str(embeddings_set),
        "--output_dir", str(tmp_path / "runs")])
    runpy.run_module("faceignite.evaluate", run_name="__main__", alter_sys=True)
    printed = capsys.readouterr().out
    assert "L2 (Euclidean) distance between L2-normalised embeddings" in printed
    assert "ROC curve" in printed
    assert os.path.exists(os.path.join(run_dir(str(tmp_path / "runs")), "metrics.json"))


def test_names_that_do_not_fit_the_array_exit_2_naming_both_files(embeddings_set, tmp_path, caplog):
    (embeddings_set / "short.txt").write_text("Ann/Ann_0001\n")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        main(["--embeddings", str(embeddings_set / "emb.npy"), "--names",
              str(embeddings_set / "short.txt"), "--lfw", str(embeddings_set),
              "--output_dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    assert "short.txt has 1 names but --embeddings" in caplog.text
    assert "emb.npy has 800 rows" in caplog.text


def _checkpoint(path, model: torch.nn.Module, **extra) -> str:
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": model.architecture,
                "embedding_dimension": model.embedding_dim, "num_classes": 24, **extra}, path)
    return str(path)


def test_checkpoint_mode_matches_the_training_time_evaluator(synthetic_root, tmp_path):
    pairs_root = str(synthetic_root[1])
    lines = open(os.path.join(pairs_root, "pairs.txt")).read().split("\n")[1:]
    subset = [line for f in range(10)  # 3 same + 3 different pairs of each fold
              for line in lines[60 * f: 60 * f + 3] + lines[60 * f + 30: 60 * f + 33]]
    pairs_file = tmp_path / "pairs_small.txt"
    pairs_file.write_text("10\t3\n" + "\n".join(subset) + "\n")
    torch.manual_seed(0)
    model = build_model("tiny", 32).eval()
    ckpt = _checkpoint(tmp_path / "best.pt", model, image_size=32, lfw_threshold=1.0)
    result = main(["--checkpoint", ckpt, "--lfw", pairs_root, "--lfw_pairs", str(pairs_file),
                   "--output_dir", str(tmp_path / "runs"), "--device", "cpu", "--num_workers", "0"])
    expected = create_pairs_evaluator(model, pairs_root, "cpu", 32, str(pairs_file)).run()
    assert result.num_pairs == 60 and result.pairs_file == str(pairs_file)
    assert result.metrics() == pytest.approx(expected.metrics(), abs=1e-6)
    assert os.path.isfile(os.path.join(run_dir(str(tmp_path / "runs")), "roc_best.png"))

    # a checkpoint validated with flip TTA and cosine distance is evaluated the same way
    trained_as = _checkpoint(tmp_path / "flip.pt", model, image_size=32,
                             config={"lfw_flip": True, "distance": "cosine"})
    again = main(["--checkpoint", trained_as, "--lfw", pairs_root, "--lfw_pairs", str(pairs_file),
                  "--output_dir", str(tmp_path / "flip"), "--device", "cpu", "--num_workers", "0"])
    expected = create_pairs_evaluator(model, pairs_root, "cpu", 32, str(pairs_file), flip=True,
                                      distance="cosine").run()
    assert again.distance == "cosine"
    assert again.metrics() == pytest.approx(expected.metrics(), abs=1e-6)
    written = json.load(open(os.path.join(run_dir(str(tmp_path / "flip")), "metrics.json")))
    assert written["flip"] is True and written["distance"] == "cosine"


class Custom:
    """An arbitrary pickled object: ``weights_only`` loading must refuse it."""


def test_bad_checkpoints_fail_with_one_line_naming_the_file(synthetic_root, tmp_path, caplog):
    torch.save({"model": Custom()}, tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    cases = {"missing.pt": "checkpoint not found: .*missing.pt",
             "pickled.pt": "refusing to load .*pickled.pt: it holds code or objects that are refused "
                           r"\(not loaded, for safety\): Python objects test_lfw_evaluate.Custom",
             "other.pt": "other.pt is not a faceignite training checkpoint: no model_state_dict"}
    for name, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", str(tmp_path / name), "--lfw", str(synthetic_root[1]),
                  "--output_dir", str(tmp_path / "runs"), "--device", "cpu"])
        assert exit_.value.code == 2
        (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert re.search(message, line) and "\n" not in line


def test_published_mobilefacenet_embeddings_under_our_protocol(tmp_path, capsys):
    folder = shared_path("pretrained", "mobilefacenet_xiaoccer", "lfw-pairs-embeddings")
    result = main(["--embeddings", str(folder / "emb.npy"), "--names", str(folder / "names.txt"),
                   "--lfw_pairs", str(shared_path("lfw", "pairs.txt")),
                   "--output_dir", str(tmp_path / "runs")])
    print(f"MobileFaceNet on LFW: {100 * result.accuracy:.2f} % (published 99.30 %)")
    assert result.num_pairs == 6000 and result.num_folds == 10 and result.skipped_pairs == 0
    # published 99.30 % with its authors' alignment and protocol; our crops are a re-alignment
    assert 0.985 <= result.accuracy <= 0.995
    assert result.auc > 0.995 and result.eer < 0.02 and result.val[1e-3] > 0.9
