"""Optimizers: one for the model (+ classifier head), one of its own for the centres."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses.protocol import center_parameters, model_parameters


def _decay_groups(params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """No weight decay on biases and BatchNorm weights (1-D tensors), the usual ResNet recipe."""
    decay, no_decay = [], []
    for _, p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, params: list[dict] | Iterable[nn.Parameter], lr: float,
                    momentum: float = 0.9, weight_decay: float = 0.0, adam_beta1: float = 0.9,
                    adagrad_lr_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov-free momentum), ``adam`` (β1 ``adam_beta1``, β2 0.999) or ``adagrad``
    (``adagrad_lr_decay``) over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(adam_beta1, 0.999),
                                weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, lr_decay=adagrad_lr_decay,
                                   weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: choose sgd, adam or adagrad")


def build_optimizers(model: nn.Module, criterion: nn.Module, optimizer: str, lr: float,
                     momentum: float, weight_decay: float, center_loss_lr: float,
                     adam_beta1: float = 0.9, adagrad_lr_decay: float = 0.0,
                     backbone_lr_scale: float = 1.0) -> dict[str, torch.optim.Optimizer]:
    """``{"model": ..., "centers": ...}``: the model's parameters and the criterion's
    ``model_parameters()`` in one optimizer; its ``center_parameters()`` (when it has the
    capability, :mod:`faceignite.losses.protocol`) in a plain SGD with no weight decay.

    ``backbone_lr_scale`` (``--backbone_lr_scale``) != 1: the network's groups carry
    ``lr_scale`` and learn at that fraction of the classifier's LR (:func:`apply_lr_scales`)."""
    named = list(model.named_parameters())
    head = [(f"criterion.{i}", p) for i, p in enumerate(model_parameters(criterion))]
    if backbone_lr_scale == 1:  # the two groups of every earlier checkpoint
        groups = _decay_groups(named + head, weight_decay)
    else:
        if not head:
            raise FaceIgniteError("--backbone_lr_scale needs a loss with a classifier (center, "
                                  "ArcFace, CosFace): the triplet loss trains the network alone")
        groups = ([{**g, "lr_scale": backbone_lr_scale, "lr": lr * backbone_lr_scale}
                   for g in _decay_groups(named, weight_decay)]
                  + [{**g, "lr_scale": 1.0} for g in _decay_groups(head, weight_decay)])
    optimizers = {"model": build_optimizer(optimizer, groups, lr, momentum, weight_decay,
                                           adam_beta1, adagrad_lr_decay)}
    centers = center_parameters(criterion)
    if centers:
        optimizers["centers"] = torch.optim.SGD(centers, lr=center_loss_lr)
    return optimizers


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> None:
    """Set each group that carries ``lr_scale`` to that fraction of the LR the schedule gave the
    unscaled (classifier) groups; run after the schedule's step.  A no-op without scales."""
    scaled = [g for g in optimizer.param_groups if g.get("lr_scale", 1.0) != 1.0]
    base = next((g["lr"] for g in optimizer.param_groups if g.get("lr_scale", 1.0) == 1.0), None)
    if not scaled or base is None:
        return
    for group in scaled:
        group["lr"] = base * group["lr_scale"]
