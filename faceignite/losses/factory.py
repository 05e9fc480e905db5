"""Criteria built from the options, and each loss's own option defaults: one table.

``LOSSES[name](cfg, num_classes)`` builds the criterion; ``LOSS_DEFAULTS[name]`` holds the
options a recipe with that loss changes (the margin defaults are the classes' own
``default_margin``, stated once there).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from torch import nn

from faceignite.losses.center import SoftmaxCenterLoss
from faceignite.losses.margin import ArcFace, CosFace
from faceignite.losses.triplet import TripletLoss

CriterionFactory = Callable[[argparse.Namespace, int], nn.Module]


def center_loss(cfg: argparse.Namespace, num_classes: int) -> SoftmaxCenterLoss:
    """Softmax cross-entropy + ``--center_loss_weight`` x center loss (the default)."""
    return SoftmaxCenterLoss(num_classes, cfg.embedding_dim, cfg.center_loss_weight,
                             cfg.label_smoothing)


def triplet_loss(cfg: argparse.Namespace, num_classes: int) -> TripletLoss:
    """Triplet loss with ``--margin`` and ``--triplet_mining`` (no classifier)."""
    return TripletLoss(cfg.margin, cfg.triplet_mining)


def arcface(cfg: argparse.Namespace, num_classes: int) -> ArcFace:
    return ArcFace(num_classes, cfg.embedding_dim, cfg.scale, cfg.margin)


def cosface(cfg: argparse.Namespace, num_classes: int) -> CosFace:
    return CosFace(num_classes, cfg.embedding_dim, cfg.scale, cfg.margin)


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
