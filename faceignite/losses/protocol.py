"""The written interface of a training criterion, and its optional capabilities.

Every criterion is a :class:`Criterion`: ``criterion(embeddings, labels)`` returns a dict holding
at least ``loss`` (a 0-d tensor to minimise); other 0-d entries (``ce``, ``center``, ``active``,
…) are logged as they are, and ``logits`` (B x classes), when present, gives the batch accuracy.

Capabilities a criterion may add, each checked with ``isinstance`` (the protocols are
``runtime_checkable``) by the engine, the optimizers and the held-out evaluator:

* :class:`Classifying` — ``logits(embeddings)``: held-out accuracy and loss are computed;
* :class:`HasModelParameters` — ``model_parameters()``: trained with the model's optimizer
  (a classifier head, ArcFace/CosFace class weights);
* :class:`HasCenterParameters` — ``center_parameters()``: trained by an optimizer of their own
  (``--center_loss_lr``);
* :class:`AdjustsGradients` — ``before_optimizer_step()``: called after ``backward``, before the
  optimizers step (center loss rescales its centres' gradient there).

A DDP-wrapped criterion hides these methods: pass the plain module (see
:func:`faceignite.runtime.unwrap`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Criterion(Protocol):
    """``forward(embeddings (B x D), labels (B,)) -> {"loss": 0-d tensor, ...}``."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        ...


@runtime_checkable
class Classifying(Protocol):
    """A criterion with a classifier: ``logits(embeddings) -> B x classes`` (no margin)."""

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        ...


@runtime_checkable
class HasModelParameters(Protocol):
    """Parameters of the criterion trained with the model's optimizer (weight decay rules alike)."""

    def model_parameters(self) -> list[nn.Parameter]:
        ...


@runtime_checkable
class HasCenterParameters(Protocol):
    """Parameters of the criterion trained by a plain SGD of their own (class centres)."""

    def center_parameters(self) -> list[nn.Parameter]:
        ...


@runtime_checkable
class AdjustsGradients(Protocol):
    """A hook after ``backward`` and before the optimizers step."""

    def before_optimizer_step(self) -> None:
        ...


def model_parameters(criterion: object) -> list[nn.Parameter]:
    """The criterion's parameters for the model's optimizer (none unless it has the capability)."""
    return list(criterion.model_parameters()) if isinstance(criterion, HasModelParameters) else []


def center_parameters(criterion: object) -> list[nn.Parameter]:
    """The criterion's parameters for the centres' optimizer (none unless it has the capability)."""
    return list(criterion.center_parameters()) if isinstance(criterion, HasCenterParameters) else []


def is_classifying(criterion: object) -> bool:
    """Whether held-out accuracy can be computed with this criterion: it has ``logits()``, or
    it is collective with ``row_statistics()`` (Partial FC: evaluated by every process
    together, see :func:`faceignite.engine.create_sharded_evaluator`)."""
    return isinstance(criterion, Classifying) or (getattr(criterion, "collective", False)
                                                  and hasattr(criterion, "row_statistics"))
