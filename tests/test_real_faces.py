"""Real faces: a short training run on CelebA identities must verify people it never saw better
than the untrained network does (LFW-format pairs of held-out CelebA identities).

Marked ``slow``: it must train a real backbone (ResNet-34) on real faces."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_path
from faceignite.verification import create_pairs_evaluator, read_pairs
from faceignite.verification.make_pairs import make_pairs_set
from faceignite.models import build_model

from handlers.standard import main as train

TRAIN_IDS, HELD_OUT_IDS, MIN_IMAGES = 60, 60, 19
IMAGE_SIZE, EPOCHS, SEED = 32, 8, 1


def split_identities(root) -> tuple[list[str], list[str]]:
    """Identities with at least MIN_IMAGES images, shuffled once: (held out, trained on)."""
    ids = sorted(d for d in os.listdir(root) if len(os.listdir(root / d)) >= MIN_IMAGES)
    np.random.default_rng(0).shuffle(ids)
    return ids[:HELD_OUT_IDS], ids[HELD_OUT_IDS:HELD_OUT_IDS + TRAIN_IDS]


@pytest.mark.slow  # trains ResNet-34 on 60 CelebA identities
def test_short_celeba_run_beats_untrained_model_on_held_out_identities(tmp_path):
    celeba = shared_path("celeba_subset", "aligned-160")
    held_out, trained_on = split_identities(celeba)
    assert not set(held_out) & set(trained_on)
    train_root = tmp_path / "train"
    for ident in trained_on:
        shutil.copytree(celeba / ident, train_root / ident)
    pairs_file = make_pairs_set(str(celeba), str(tmp_path / "pairs"), held_out, folds=2,
                                per_fold=150, seed=0)
    pairs = read_pairs(pairs_file)
    assert len(pairs) == 600 and pairs.issame.sum() == 300 and pairs.num_folds == 2

    torch.manual_seed(SEED)
    untrained = build_model("resnet34").eval()
    before = create_pairs_evaluator(untrained.embed, str(tmp_path / "pairs"), torch.device("cpu"),
                                    IMAGE_SIZE, flip=True).run()

    metrics = train(["--dataroot", str(train_root), "--lfw", str(tmp_path / "pairs"),
                     "--image_size", str(IMAGE_SIZE), "--epochs", str(EPOCHS), "--seed", str(SEED),
                     "--optimizer", "adam", "--lr", "0.001", "--lr_scheduler", "cosine",
                     "--warmup_epochs", "0", "--batch_size", "32", "--valid_split", "0",
                     "--lfw_flip", "--lfw_validation_epoch_interval", str(EPOCHS),
                     "--num_workers", "0", "--device", "cpu", "--clearml", "off",
                     "--output_dir", str(tmp_path / "runs")], name="celeba_short")

    print(f"untrained: {before.summary()}\ntrained:   accuracy {metrics['lfw_accuracy']:.4f} "
          f"AUC {metrics['lfw_auc']:.4f}")
    assert metrics["train_accuracy"] > 5 / TRAIN_IDS  # it fits the training identities
    assert metrics["lfw_accuracy"] >= before.accuracy + 0.05
    assert metrics["lfw_auc"] >= before.auc + 0.05
