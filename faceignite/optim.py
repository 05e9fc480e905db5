"""Optimizers: one for the model (+ classifier head), one of its own for the centres."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

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
                     adam_beta1: float = 0.9, adagrad_lr_decay: float = 0.0
                     ) -> dict[str, torch.optim.Optimizer]:
    """``{"model": ..., "centers": ...}``: the model's parameters and the criterion's
    ``model_parameters()`` in one optimizer; its ``center_parameters()`` (when it has the
    capability, :mod:`faceignite.losses.protocol`) in a plain SGD with no weight decay."""
    named = list(model.named_parameters())
    named += [(f"criterion.{i}", p) for i, p in enumerate(model_parameters(criterion))]
    optimizers = {"model": build_optimizer(optimizer, _decay_groups(named, weight_decay), lr,
                                           momentum, weight_decay, adam_beta1, adagrad_lr_decay)}
    centers = center_parameters(criterion)
    if centers:
        optimizers["centers"] = torch.optim.SGD(centers, lr=center_loss_lr)
    return optimizers
