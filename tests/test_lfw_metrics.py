"""The verification protocol on hand-built embeddings and distances with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from faceignite.errors import FaceIgniteError
from faceignite.verification.metrics import (best_threshold, evaluate_distances, evaluate_embeddings,
                                    threshold_at_far)
from faceignite.verification.pairs import Pairs

CONTRACT = {"lfw_accuracy", "lfw_accuracy_std", "lfw_threshold", "lfw_val_far1e-3",
            "lfw_val_far1e-2", "lfw_auc", "lfw_eer"}


def lfw_like_pairs(per_class: int = 300, folds: int = 10) -> Pairs:
    """LFW's layout over 2 distinct images per pair: per fold, same pairs then different."""
    n = 2 * per_class * folds
    issame = np.tile(np.repeat([True, False], per_class), folds)
    return Pairs("hand-built", tuple(f"P{i}/P{i}_0001" for i in range(2 * n)), np.arange(0, 2 * n, 2),
                 np.arange(1, 2 * n, 2), issame, np.repeat(np.arange(folds), 2 * per_class),
                 np.arange(n))


def identity_embeddings(pairs: Pairs, noise: float, dim: int = 64, seed: int = 0) -> np.ndarray:
    """One random direction per pair's identity; a same pair shares it (plus noise)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(pairs.keys), dim))
    emb[pairs.right[pairs.issame]] = emb[pairs.left[pairs.issame]]
    return emb + noise * rng.normal(size=emb.shape)


def test_separable_embeddings_score_perfectly():
    pairs = lfw_like_pairs()
    result = evaluate_embeddings(identity_embeddings(pairs, noise=0.05), pairs)
    assert result.accuracy == 1.0 and result.accuracy_std == 0.0
    assert result.auc == 1.0 and result.eer == 0.0
    assert result.val == {1e-3: 1.0, 1e-2: 1.0} and result.far == {1e-3: 0.0, 1e-2: 0.0}
    assert set(result.metrics()) == CONTRACT
    assert result.num_folds == 10 and result.num_pairs == 6000 and result.num_same == 3000


def test_random_embeddings_score_chance():
    pairs = lfw_like_pairs()
    emb = np.random.default_rng(1).normal(size=(len(pairs.keys), 64))
    result = evaluate_embeddings(emb, pairs)
    assert abs(result.accuracy - 0.5) < 0.04  # the best of 9 folds' thresholds, overfit a little
    assert abs(result.auc - 0.5) < 0.03 and abs(result.eer - 0.5) < 0.03
    assert result.val[1e-3] < 0.02


def test_known_answer_with_one_unavoidable_error_per_fold():
    # per fold: 10 same pairs at 0.2, 10 different at 1.0 and 1 same pair at 1.5 (always wrong)
    fold = np.array([0.2] * 10 + [1.0] * 10 + [1.5])
    same = np.array([True] * 10 + [False] * 10 + [True])
    d, s, folds = np.tile(fold, 10), np.tile(same, 10), np.repeat(np.arange(10), 21)
    result = evaluate_distances(d, s, folds)
    assert result.accuracy == pytest.approx(20 / 21) and result.accuracy_std == pytest.approx(0)
    assert result.threshold == pytest.approx(0.6)  # half-way between 0.2 and 1.0
    assert result.auc == pytest.approx(10 / 11)  # 100 of 110 same pairs beat every different one
    assert result.eer == pytest.approx(1 / 11)
    # 90 impostor pairs choose each threshold: FAR 1e-2 (0.9 false accepts) is not resolvable
    assert result.min_far == pytest.approx(1 / 90) and result.val[1e-2] is None
    assert result.metrics()["lfw_val_far1e-2"] is None and "n/a" in result.summary()
    result = evaluate_distances(d, s, folds, far_targets=(2e-2,))
    assert result.val[2e-2] == pytest.approx(10 / 11) and result.far[2e-2] == 0.0


def test_each_fold_threshold_comes_only_from_the_other_folds():
    pairs = lfw_like_pairs(per_class=50)
    d = np.linalg.norm(np.diff(identity_embeddings(pairs, noise=0.9, dim=16).reshape(-1, 2, 16),
                               axis=1)[:, 0], axis=1)
    before = evaluate_distances(d, pairs.issame, pairs.folds)
    test = pairs.folds == 3
    for k in range(10):
        other = pairs.folds != k
        assert before.fold_thresholds[k] == best_threshold(d[other], pairs.issame[other])
    # move every same pair of fold 3 far away: fold 3's threshold and the metric machinery
    # must ignore it, while every other fold (which trains on fold 3) sees it
    shifted = d.copy()
    shifted[test & pairs.issame] += 5.0
    after = evaluate_distances(shifted, pairs.issame, pairs.folds)
    assert after.fold_thresholds[3] == before.fold_thresholds[3]
    assert after.fold_accuracies[3] < before.fold_accuracies[3]
    assert not np.allclose(np.delete(after.fold_thresholds, 3), np.delete(before.fold_thresholds, 3))


def test_threshold_at_far_gives_the_best_tar_within_the_target():
    rng = np.random.default_rng(2)
    d_same, d_diff = rng.uniform(0.0, 1.0, 500), rng.uniform(0.5, 2.0, 2000)
    d, s = np.concatenate([d_same, d_diff]), np.array([True] * 500 + [False] * 2000)
    for far in (1e-3, 1e-2, 0.1):
        t = threshold_at_far(d, s, far)
        # brute force over every candidate threshold: the best TAR with FAR <= target …
        within = [c for c in d if np.mean(d_diff <= c) <= far]
        best = max(np.mean(d_same <= c) for c in within)
        assert np.mean(d_diff <= t) <= far and np.mean(d_same <= t) == best
        # … and no false accept beyond those that buy it
        cheapest = min(np.mean(d_diff <= c) for c in within if np.mean(d_same <= c) == best)
        assert np.mean(d_diff <= t) == cheapest


def test_cosine_and_l2_agree_on_normalised_embeddings_but_say_which():
    pairs = lfw_like_pairs(per_class=100)
    emb = identity_embeddings(pairs, noise=1.0)
    l2, cos = evaluate_embeddings(emb, pairs, "l2"), evaluate_embeddings(emb, pairs, "cosine")
    assert l2.accuracy == cos.accuracy and l2.auc == pytest.approx(cos.auc)
    assert 0.6 < l2.accuracy < 1.0
    assert cos.threshold == pytest.approx(l2.threshold ** 2 / 2, rel=0.05)  # d² = 2 - 2 cos
    assert "L2 (Euclidean) distance between L2-normalised" in l2.table()
    assert "cosine distance" in cos.table()


def test_non_finite_embeddings_are_refused():
    pairs = lfw_like_pairs(per_class=10)
    emb = identity_embeddings(pairs, noise=0.1)
    emb[5, 0] = np.nan
    with pytest.raises(FaceIgniteError, match="1 of 400 embeddings are not finite.*P5/P5_0001"):
        evaluate_embeddings(emb, pairs)
