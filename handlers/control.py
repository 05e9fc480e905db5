"""Run control: stop on NaN (always), after a wall-clock budget, or when accuracy stops improving."""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, TerminateOnNan, TimeLimit

from faceignite.engine import TrainerEvents, register_trainer_events
from handlers import events

logger = logging.getLogger("faceignite")


class TerminateOnNanLoss(TerminateOnNan):
    """Ignite's TerminateOnNan, saying which loss went NaN and where to resume from.

    It stops with ``skip_completed``: nothing that runs at ``COMPLETED`` (final validation, final
    checkpoint) sees the poisoned weights, and it fires ``TrainerEvents.NAN_DETECTED`` first, so
    that handlers which save (checkpoints, Ctrl-C) stop saving.
    """

    def __init__(self, last_checkpoint: Callable[[], str | None] | None = None):
        super().__init__()
        self.last_checkpoint = last_checkpoint or (lambda: None)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        if not isinstance(output, dict):
            return super().__call__(engine)
        tensors = [v.detach().float().reshape(-1) for v in output.values()
                   if isinstance(v, torch.Tensor) and v.is_floating_point()]
        finite = not tensors or bool(torch.isfinite(torch.cat(tensors)).all())  # one host sync
        if finite and all(math.isfinite(v) for v in output.values() if isinstance(v, float)):
            return
        bad = [k for k, v in output.items()
               if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
               or isinstance(v, float) and not math.isfinite(v)]
        engine.fire_event(TrainerEvents.NAN_DETECTED)
        checkpoint = self.last_checkpoint()
        where = f"resume from {checkpoint}" if checkpoint else "no checkpoint was saved yet"
        logger.error("loss went NaN: %s at epoch %d iteration %d; stopped without saving "
                     "(try a lower --lr or --amp off); %s",
                     ", ".join(f"{k}={float(output[k]):.4g}" for k in bad), engine.state.epoch,
                     engine.state.iteration, where)
        engine.terminate(skip_completed=True)


def attach(trainer: Engine, max_time: float | None = None, early_stopping: int = 0,
           score_name: str = "lfw_accuracy",
           score_event: events.ValidationEvents | None = None,
           last_checkpoint: Callable[[], str | None] | None = None) -> dict:
    """Attach the NaN guard, and optionally a :class:`TimeLimit` and an :class:`EarlyStopping`.

    ``max_time`` (seconds) stops cleanly at the next iteration past the budget: ``COMPLETED``
    still fires, so a final validation and checkpoint follow.  ``early_stopping`` = patience in
    validations of ``score_name``, counted at ``score_event`` (default: the LFW validation for
    ``lfw_*`` scores, the held-out one otherwise).  Returns the handlers by name.
    """
    register_trainer_events(trainer)
    attached: dict = {"nan": TerminateOnNanLoss(last_checkpoint)}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, attached["nan"])
    if max_time:
        attached["time_limit"] = TimeLimit(int(math.ceil(max_time)))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, attached["time_limit"])
    if early_stopping > 0:
        events.register(trainer)
        if score_event is None:
            score_event = (events.ValidationEvents.LFW_COMPLETED if score_name.startswith("lfw")
                           else events.ValidationEvents.HOLDOUT_COMPLETED)
        attached["early_stopping"] = EarlyStopping(
            early_stopping, score_function=lambda e: e.state.metrics[score_name], trainer=trainer)
        trainer.add_event_handler(score_event, attached["early_stopping"])
    return attached
