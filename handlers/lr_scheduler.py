"""LR scheduling on Ignite's param schedulers: linear warm-up, then step, multistep or cosine."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import (ConcatScheduler, CosineAnnealingScheduler, LRScheduler,
                             PiecewiseLinear, create_lr_scheduler_with_warmup)

from faceignite.optim import apply_lr_scales


def milestones_in_epochs(milestones: Sequence[float], epochs: int) -> list[float]:
    """Milestones below 1 are fractions of the run (0.5 → half-way), others are epochs."""
    return [m * epochs if m < 1 else m for m in milestones]


def schedule_options(cfg: Any) -> dict[str, Any]:
    """The schedule's keyword arguments from the options (``--lr_scheduler``,
    ``--warmup_epochs``, ``--lr_milestones``, ``--lr_step``, ``--lr_gamma``): their defaults are
    the options table's, never repeated here."""
    return {"schedule": cfg.lr_scheduler, "warmup_epochs": cfg.warmup_epochs,
            "milestones": cfg.lr_milestones, "step_epochs": cfg.lr_step, "gamma": cfg.lr_gamma}


def build(optimizer: torch.optim.Optimizer, lr: float, epochs: int, epoch_length: int, *,
          schedule: str, warmup_epochs: float, milestones: Sequence[float], step_epochs: int,
          gamma: float) -> ConcatScheduler | PiecewiseLinear:
    """An iteration-level LR scheduler for ``optimizer`` (not yet attached); the keyword
    arguments are those of :func:`schedule_options`."""
    total = max(1, epochs * epoch_length)
    warmup = min(int(round(warmup_epochs * epoch_length)), total - 1)
    warmup = warmup if warmup >= 2 else 0  # Ignite's warm-up needs two iterations at least
    if schedule == "none":
        return PiecewiseLinear(optimizer, "lr", [(0, lr * 0.01 if warmup else lr), (max(warmup, 1), lr)])
    for group in optimizer.param_groups:
        group["lr"] = lr
    if schedule == "multistep":
        iters = sorted({max(1, int(m * epoch_length) - warmup)
                        for m in milestones_in_epochs(milestones, epochs)})
        main = LRScheduler(torch.optim.lr_scheduler.MultiStepLR(optimizer, iters, gamma))
    elif schedule == "step":
        main = LRScheduler(torch.optim.lr_scheduler.StepLR(optimizer, step_epochs * epoch_length, gamma))
    elif schedule == "cosine":
        main = CosineAnnealingScheduler(optimizer, "lr", lr, lr * 1e-3,
                                        cycle_size=max(2, total - warmup) + 1)
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}: multistep, step, cosine or none")
    if warmup <= 0:
        return main
    return create_lr_scheduler_with_warmup(main, warmup_start_value=lr * 0.01,
                                           warmup_duration=warmup, warmup_end_value=lr)


def attach(trainer: Engine, optimizer: torch.optim.Optimizer, lr: float, epochs: int,
           epoch_length: int, **kwargs) -> ConcatScheduler | PiecewiseLinear:
    """Build the schedule (see :func:`build`) and step it at every ``ITERATION_STARTED``.

    Returns the scheduler, whose ``state_dict`` a checkpoint saves.
    """
    scheduler = build(optimizer, lr, epochs, epoch_length, **kwargs)
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    if any("lr_scale" in g for g in optimizer.param_groups):  # --backbone_lr_scale, after it
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: apply_lr_scales(optimizer))
    return scheduler
