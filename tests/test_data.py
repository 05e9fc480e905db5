"""Data: index scan and cache, split, undecodable images, missing roots."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from faceignite.data import (FaceImageDataset, collate_skip_bad, load_or_build_index,
                             scan_identity_folders, stratified_split, train_transform)
from faceignite.errors import FaceIgniteError


def _write_tree(root, counts, size=24):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(n):
            ext = ".png" if i % 2 else ".jpg"
            cv2.imwrite(str(root / name / f"{i:03d}{ext}"), rng.integers(0, 255, (size, size, 3), np.uint8))


def test_index_sorted_classes_and_cache(tmp_path):
    root = tmp_path / "data"
    _write_tree(root, {"bob": 3, "alice": 2, "carol": 4})
    (root / "notes.txt").write_text("not an identity")
    (root / "alice" / "readme.txt").write_text("not an image")
    index = scan_identity_folders(str(root))
    assert index.classes == ["alice", "bob", "carol"]
    assert len(index) == 9 and index.labels() == [0, 0, 1, 1, 1, 2, 2, 2, 2]

    cache = tmp_path / "index.json"
    first = load_or_build_index(str(root), str(cache))
    cached = json.loads(cache.read_text())
    assert cached["classes"] == first.classes
    # a cached index is served without rescanning: prove it by editing the cache
    cached["files"][0] = ["000.jpg"]
    cache.write_text(json.dumps(cached))
    assert len(load_or_build_index(str(root), str(cache))) == 8
    # adding an identity folder changes the root and triggers a rescan
    _write_tree(root, {"dave": 2})
    assert load_or_build_index(str(root), str(cache)).classes[-1] == "dave"


def test_missing_and_empty_roots_name_the_path(tmp_path):
    with pytest.raises(FaceIgniteError, match=f"dataset folder not found: {tmp_path / 'nope'}"):
        scan_identity_folders(str(tmp_path / "nope"))
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(FaceIgniteError, match="no images in dataset folder .*empty"):
        scan_identity_folders(str(tmp_path / "empty"))


def test_stratified_split_is_per_class_and_seeded():
    labels = [0] * 10 + [1] * 20 + [2] * 1
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(31))
    assert [labels[i] for i in val].count(0) == 2 and [labels[i] for i in val].count(1) == 4
    assert 30 in train  # a single-image class keeps its image for training
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)


def test_undecodable_image_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "data"
    _write_tree(root, {"a": 2})
    bad = root / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    index = scan_identity_folders(str(root))
    dataset = FaceImageDataset(index.samples(), train_transform(16))
    with caplog.at_level("WARNING"):
        batch = collate_skip_bad([dataset[i] for i in range(len(dataset))])
    images, labels, skipped = batch
    assert skipped == 1 and images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 0]
    assert str(bad) in caplog.text
    assert collate_skip_bad([None, None])[1].numel() == 0


def test_augmentation_is_a_function_of_the_sample_seed(synthetic_root):
    train, _ = synthetic_root
    dataset = FaceImageDataset(scan_identity_folders(str(train)).samples()[:2], train_transform(32))
    a, b = dataset[(0, 123)][0], dataset[(0, 123)][0]
    c = dataset[(0, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentations_are_drawn_independently():
    """Seeding per sample must not make flip and colour jitter fire together."""
    from faceignite.data.dataset import seed_transform

    transform, image = train_transform(32), np.zeros((64, 64, 3), np.uint8)
    flips, jitters = [], []
    for seed in range(200):
        seed_transform(transform, seed)
        transform(image=image)
        flips.append(bool(transform.transforms[1].params))
        jitters.append(bool(transform.transforms[2].params))
    assert 0.3 < np.mean(np.array(flips) == np.array(jitters)) < 0.7
