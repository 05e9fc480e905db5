"""Held-out split evaluation with Ignite metrics (accuracy, cross-entropy loss)."""
from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader

from faceignite.engine import create_evaluator, create_sharded_evaluator
from faceignite.losses import Classifying
from faceignite.runtime import Runtime
from handlers import events

logger = logging.getLogger("faceignite")


def attach(trainer: Engine, model: nn.Module, criterion: Classifying, loader: DataLoader,
           runtime: Runtime | str, every_epochs: int = 1, every_iterations: int = 0) -> Engine:
    """Evaluate ``loader`` every ``every_epochs`` epochs (and every ``every_iterations``), and at
    the end of the run if its last iteration was not validated yet, on ``runtime`` (a
    :class:`~faceignite.runtime.Runtime`, or a device for fp32).

    Writes ``val_accuracy`` and ``val_loss`` into ``trainer.state.metrics``, then fires
    ``ValidationEvents.HOLDOUT_COMPLETED`` on the trainer; returns the evaluator engine.
    """
    events.register(trainer)
    if getattr(criterion, "collective", False):  # --partial_fc: a collective evaluation
        evaluator = create_sharded_evaluator(model, criterion, runtime)
    else:
        evaluator = create_evaluator(model, criterion, runtime,
                                     {"accuracy": Accuracy(), "loss": Loss(nn.CrossEntropyLoss())})

    done_at = {"iteration": -1}

    def run_validation(engine: Engine) -> None:
        if done_at["iteration"] == engine.state.iteration:
            return  # an epoch end that is also a --val_interval step: validate once
        done_at["iteration"] = engine.state.iteration
        evaluator.run(loader)
        m = evaluator.state.metrics
        engine.state.metrics.update({"val_accuracy": m["accuracy"], "val_loss": m["loss"]})
        logger.info("held-out  epoch %d iteration %d | accuracy %.4f | loss %.4f",
                    engine.state.epoch, engine.state.iteration, m["accuracy"], m["loss"])
        engine.fire_event(events.ValidationEvents.HOLDOUT_COMPLETED)

    event = Events.EPOCH_COMPLETED(every=max(1, every_epochs))
    if every_iterations:
        event = event | Events.ITERATION_COMPLETED(every=every_iterations)
    trainer.add_event_handler(event, run_validation)
    # a run stopped early (--max_time, early stopping) still ends validated
    trainer.add_event_handler(Events.COMPLETED, run_validation)
    events.add_evaluator(trainer, "holdout", evaluator)  # signals, trackers: by this tag
    return evaluator
