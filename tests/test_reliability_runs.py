"""Issue 18, the training run itself, on real files and real processes: batches of one and
empty batches, two runs started at once, a NaN stop's exit code, a refused resume that leaves
the run untouched, the options refused before training, and impossible or full output folders."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader

from conftest import REPO, copy_subset, shared_path
from faceignite.data import FaceImageDataset, collate_skip_bad
from faceignite.data.transforms import eval_transform, train_transform
from faceignite.engine import create_evaluator, create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import EmbeddingNet
from handlers.standard import main

SIZE = 32
PYTHON = sys.executable


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def one_error(caplog) -> str:
    (line,) = errors(caplog)
    assert "\n" not in line and "Traceback" not in line
    return line


def faces(dest: Path, identities: int, images: int) -> Path:
    return copy_subset(shared_path("celeba_subset", "aligned-160"), dest, identities, images)


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(out), "--image_size", str(SIZE),
            "--batch_size", "4", "--epochs", "1", "--valid_split", "0", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--log_interval", "0", *extra]


def spoil(path: Path) -> None:
    path.write_bytes(b"not a picture")


# ------------------------------------------------------------ item 1: a training batch of one
def test_a_set_of_batch_size_plus_one_images_trains_without_a_batch_of_one(tmp_path):
    root = faces(tmp_path / "data", 2, 3)  # 6 images at --batch_size 5: batches of 5 and 1
    out = tmp_path / "runs"
    metrics = main(args(root, out, "--batch_size", "5", "--epochs", "2"))
    run_dir = next(out.glob("resnet34_center-*"))
    assert sorted(p.name for p in run_dir.glob("training_checkpoint_*.pt")) == \
        ["training_checkpoint_1.pt", "training_checkpoint_2.pt"]  # one step an epoch
    assert metrics["skipped_images"] == 0


def test_a_batch_cut_to_one_image_by_undecodable_files_is_skipped_and_counted(tmp_path):
    root = faces(tmp_path / "data", 2, 2)
    files = sorted(root.rglob("*.jpg"))
    spoil(files[0])
    dataset = FaceImageDataset([(str(f), i % 2) for i, f in enumerate(files)],
                               train_transform(SIZE))
    torch.manual_seed(0)
    model = EmbeddingNet("resnet34", 16)
    criterion = SoftmaxCenterLoss(2, 16, 0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = {"model": torch.optim.SGD(model.parameters(), lr=0.1),
                  "center": torch.optim.SGD(criterion.parameters(), lr=0.5)}
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: outputs.append(e.state.output))
    trainer.run([collate_skip_bad([dataset[0], dataset[1]])], max_epochs=1)  # [bad, good]
    assert [(o["batch_size"], o["skipped"]) for o in outputs] == [(0, 2)]
    # nothing trained on it: weights and BatchNorm statistics as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    trainer.run([collate_skip_bad([dataset[2], dataset[3]])], max_epochs=2)  # two good ones
    assert outputs[-1]["batch_size"] == 2 and outputs[-1]["skipped"] == 0
    stats = next(k for k in before if k.endswith("running_mean"))
    assert not torch.equal(model.state_dict()[stats], before[stats])  # a real step changes it


def test_a_training_set_of_one_image_is_one_line_before_training(tmp_path, caplog):
    root = faces(tmp_path / "data", 1, 1)
    with pytest.raises(SystemExit) as exc:
        main(args(root, tmp_path / "runs"))
    assert exc.value.code == 2
    assert one_error(caplog) == (f"error: {root} leaves 1 training image(s) after the held-out "
                                 f"split (--valid_split 0.0): BatchNorm needs at least 2; add "
                                 f"images or lower --valid_split")


# ------------------------------------------------------------ item 2: an empty held-out batch
def test_a_held_out_batch_with_no_decodable_image_is_left_out_of_the_metrics(tmp_path):
    root = faces(tmp_path / "data", 2, 3)
    files = sorted(root.rglob("*.jpg"))
    samples = [(str(f), i // 3) for i, f in enumerate(files)]
    spoil(files[0])
    spoil(files[1])  # the whole first batch of 2
    torch.manual_seed(0)
    model = EmbeddingNet("resnet34", 16).eval()
    criterion = SoftmaxCenterLoss(2, 16, 0.01)

    def evaluate(pairs):
        evaluator = create_evaluator(model, criterion, torch.device("cpu"),
                                     {"accuracy": Accuracy(), "loss": Loss(nn.CrossEntropyLoss())})
        loader = DataLoader(FaceImageDataset(pairs, eval_transform(SIZE)), batch_size=2,
                            collate_fn=collate_skip_bad)
        return evaluator.run(loader).metrics

    with_empty = evaluate(samples)
    only_good = evaluate(samples[2:])
    assert with_empty == pytest.approx(only_good) and 0 <= with_empty["accuracy"] <= 1
