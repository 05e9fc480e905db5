"""Compactness (mean intra-class / mean inter-class L2 distance) against hand computations."""
import itertools

import numpy as np
import pytest
import torch

from faceignite.compactness import compactness
from faceignite.errors import FaceIgniteError


def brute_force(e: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 2]
    keep = np.isin(labels, classes)
    e, labels = e[keep], labels[keep]
    intra = np.mean([np.mean([np.linalg.norm(e[i] - e[j])
                              for i, j in itertools.combinations(np.flatnonzero(labels == c), 2)])
                     for c in classes])
    inter = np.mean([np.linalg.norm(e[i] - e[j]) for i, j in itertools.combinations(range(len(e)), 2)
                     if labels[i] != labels[j]])
    return intra, inter


def test_small_example_by_hand():
    e = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0], [50.0, 50.0]])
    labels = np.array(["a", "a", "b", "b", "c"])  # c has one image: left out
    c = compactness(e, labels)
    assert c.intra == pytest.approx((2 + 4) / 2)
    inter = np.mean([10, np.hypot(10, 4), 8, np.hypot(8, 4)])
    assert c.inter == pytest.approx(inter)
    assert c.ratio == pytest.approx(3 / inter)
    assert (c.num_classes, c.num_images) == (2, 4)


def test_matches_brute_force_across_chunks_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=60)
    e = rng.normal(size=(60, 5)) + 3 * rng.normal(size=(7, 5))[labels]
    intra, inter = brute_force(e, labels)
    for chunk in (1, 7, 1000):
        c = compactness(e, labels, chunk=chunk)
        assert c.intra == pytest.approx(intra) and c.inter == pytest.approx(inter)
    assert compactness(5 * e, labels).ratio == pytest.approx(c.ratio)  # ratio has no unit
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    assert compactness(e, labels, normalize=True).ratio == pytest.approx(compactness(n, labels).ratio)
    assert compactness(torch.from_numpy(e).float(), labels).ratio == pytest.approx(c.ratio, rel=1e-5)


def test_tighter_classes_have_lower_ratio():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 5)
    means = rng.normal(size=(10, 8))[labels]
    loose = compactness(means + rng.normal(size=(50, 8)), labels)
    tight = compactness(means + 0.1 * rng.normal(size=(50, 8)), labels)
    assert tight.ratio < loose.ratio / 3


def test_needs_two_classes_with_two_images():
    with pytest.raises(FaceIgniteError, match="two classes"):
        compactness(np.zeros((3, 2)), np.array([0, 0, 1]))
    with pytest.raises(FaceIgniteError, match="N x D"):
        compactness(np.zeros((3, 2)), np.array([0, 0]))
