"""Criteria built from the options, and each loss's own option defaults: one table.

``LOSSES[name](cfg, num_classes)`` builds the criterion; ``LOSS_DEFAULTS[name]`` holds the
options a recipe with that loss changes (the margin defaults are the classes' own
``default_margin``, stated once there).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses.center import SoftmaxCenterLoss
from faceignite.losses.margin import ArcFace, CosFace
from faceignite.losses.partial_fc import PartialFC
from faceignite.losses.triplet import TripletLoss

CriterionFactory = Callable[[argparse.Namespace, int], nn.Module]


def partial_fc(cfg: argparse.Namespace, num_classes: int, head: str) -> PartialFC | None:
    """With ``--partial_fc``: the sharded criterion of ``head`` (softmax, arcface, cosface) with
    ``--sample_rate``; build it inside the distributed run (process group started).  None
    without the option."""
    if not getattr(cfg, "partial_fc", False):
        if getattr(cfg, "sample_rate", 1.0) != 1.0:
            raise FaceIgniteError(f"--sample_rate {cfg.sample_rate}: needs --partial_fc")
        return None
    return PartialFC(num_classes, cfg.embedding_dim, head, center_loss_weight=cfg.center_loss_weight,
                     label_smoothing=cfg.label_smoothing if head == "softmax" else 0.0,
                     scale=cfg.scale, margin=cfg.margin, sample_rate=cfg.sample_rate)


def center_loss(cfg: argparse.Namespace, num_classes: int) -> SoftmaxCenterLoss | PartialFC:
    """Softmax cross-entropy + ``--center_loss_weight`` x center loss (the default)."""
    return partial_fc(cfg, num_classes, "softmax") or SoftmaxCenterLoss(
        num_classes, cfg.embedding_dim, cfg.center_loss_weight, cfg.label_smoothing)


def triplet_loss(cfg: argparse.Namespace, num_classes: int) -> TripletLoss:
    """Triplet loss with ``--margin`` and ``--triplet_mining`` (no classifier)."""
    if getattr(cfg, "partial_fc", False):
        raise FaceIgniteError("--partial_fc: the triplet loss has no classifier to shard; use it "
                              "with the center, arcface or cosface experiments")
    if getattr(cfg, "n_triplets", None) and cfg.triplet_mining != "random":
        raise FaceIgniteError(f"--n_triplets {cfg.n_triplets} is for --triplet_mining random "
                              f"(random triplets per epoch); --triplet_mining "
                              f"{cfg.triplet_mining} mines inside each batch: drop one of them")
    return TripletLoss(cfg.margin, cfg.triplet_mining)


def arcface(cfg: argparse.Namespace, num_classes: int) -> ArcFace | PartialFC:
    return partial_fc(cfg, num_classes, "arcface") or ArcFace(num_classes, cfg.embedding_dim,
                                                              cfg.scale, cfg.margin)


def cosface(cfg: argparse.Namespace, num_classes: int) -> CosFace | PartialFC:
    return partial_fc(cfg, num_classes, "cosface") or CosFace(num_classes, cfg.embedding_dim,
                                                              cfg.scale, cfg.margin)


LOSSES: dict[str, CriterionFactory] = {"center": center_loss, "triplet": triplet_loss,
                                       "arcface": arcface, "cosface": cosface}

# s = 64 multiplies the gradients: at the center-loss lr 0.1 training stalls where every embedding
# is orthogonal to every class (insightface's 0.1 is for batches of 1024); 0.003 learns.
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "center": {},
    "triplet": {"images_per_identity": 4, "valid_split": 0.0},
    "arcface": {"lr": 0.003},
    "cosface": {"lr": 0.003},
}
