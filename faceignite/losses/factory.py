"""Criteria built from the loss options, and each loss's own option defaults: one table.

``LOSSES[name](options, num_classes)`` builds the criterion from a :class:`LossOptions` group
(the composition makes it: ``options_group(cfg, LossOptions)``); ``LOSS_DEFAULTS[name]`` holds
the options a recipe with that loss changes (the margin defaults are the classes' own
``default_margin``, stated once there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses.center import SoftmaxCenterLoss
from faceignite.losses.margin import ArcFace, CosFace
from faceignite.losses.partial_fc import PartialFC
from faceignite.losses.triplet import TripletLoss

@dataclass(frozen=True)
class LossOptions:
    """The options a criterion is built from (``--embedding_dim``, ``--margin``, ...): the
    sizes and weights of :mod:`faceignite.losses`, ``--partial_fc`` and its ``--sample_rate``.
    ``margin`` None: the loss class's own default."""

    embedding_dim: int
    center_loss_weight: float = 0.003
    label_smoothing: float = 0.0
    scale: float = 64.0
    margin: float | None = None
    triplet_mining: str = "semi_hard"
    n_triplets: int | None = None
    partial_fc: bool = False
    sample_rate: float = 1.0


CriterionFactory = Callable[[LossOptions, int], nn.Module]  # (options, number of classes)


def partial_fc(cfg: LossOptions, num_classes: int, head: str) -> PartialFC | None:
    """With ``--partial_fc``: the sharded criterion of ``head`` (softmax, arcface, cosface) with
    ``--sample_rate``; build it inside the distributed run (process group started).  None
    without the option."""
    if not cfg.partial_fc:
        if cfg.sample_rate != 1.0:
            raise FaceIgniteError(f"--sample_rate {cfg.sample_rate}: needs --partial_fc")
        return None
    return PartialFC(num_classes, cfg.embedding_dim, head, center_loss_weight=cfg.center_loss_weight,
                     label_smoothing=cfg.label_smoothing if head == "softmax" else 0.0,
                     scale=cfg.scale, margin=cfg.margin, sample_rate=cfg.sample_rate)


def center_loss(cfg: LossOptions, num_classes: int) -> SoftmaxCenterLoss | PartialFC:
    """Softmax cross-entropy + ``--center_loss_weight`` x center loss (the default)."""
    return partial_fc(cfg, num_classes, "softmax") or SoftmaxCenterLoss(
        num_classes, cfg.embedding_dim, cfg.center_loss_weight, cfg.label_smoothing)


def triplet_loss(cfg: LossOptions, num_classes: int) -> TripletLoss:
    """Triplet loss with ``--margin`` and ``--triplet_mining`` (no classifier)."""
    if cfg.partial_fc:
        raise FaceIgniteError("--partial_fc: the triplet loss has no classifier to shard; use it "
                              "with the center, arcface or cosface experiments")
    if cfg.n_triplets and cfg.triplet_mining != "random":
        raise FaceIgniteError(f"--n_triplets {cfg.n_triplets} is for --triplet_mining random "
                              f"(random triplets per epoch); --triplet_mining "
                              f"{cfg.triplet_mining} mines inside each batch: drop one of them")
    return TripletLoss(cfg.margin, cfg.triplet_mining)


def arcface(cfg: LossOptions, num_classes: int) -> ArcFace | PartialFC:
    return partial_fc(cfg, num_classes, "arcface") or ArcFace(num_classes, cfg.embedding_dim,
                                                              cfg.scale, cfg.margin)


def cosface(cfg: LossOptions, num_classes: int) -> CosFace | PartialFC:
    return partial_fc(cfg, num_classes, "cosface") or CosFace(num_classes, cfg.embedding_dim,
                                                              cfg.scale, cfg.margin)


LOSSES: dict[str, CriterionFactory] = {"center": center_loss, "triplet": triplet_loss,
                                       "arcface": arcface, "cosface": cosface}

# s = 64 multiplies the gradients: at the center-loss lr 0.1 training stalls where every embedding
# is orthogonal to every class (insightface's 0.1 is for batches of 1024); 0.003 learns.
# The margin of each margin loss is its class's own, recorded in config.json (not null).
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "center": {},
    "triplet": {"images_per_identity": 4, "valid_split": 0.0, "margin": TripletLoss.default_margin},
    "arcface": {"lr": 0.003, "margin": ArcFace.default_margin},
    "cosface": {"lr": 0.003, "margin": CosFace.default_margin},
}

# What each loss is, in the words of an experiment's -h.
LOSS_TITLES: dict[str, str] = {
    "center": "softmax cross-entropy + center loss (Wen et al.)",
    "triplet": "triplet loss with online mining in P x K batches (FaceNet; no classifier)",
    "arcface": "ArcFace, additive angular margin softmax (Deng et al.)",
    "cosface": "CosFace, additive cosine margin softmax (Wang et al.)",
}


def describe_recipe(name: str, model: str, loss: str) -> str:
    """An experiment's description for its ``-h``: its name, backbone and loss."""
    return (f"{name}: train a {model} face-embedding backbone with "
            f"{LOSS_TITLES.get(loss, loss)}; every option below shows this experiment's default")
