"""LFW (or any LFW-format pairs set) verification during training, with a ROC PNG per validation."""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from torch import nn

from faceignite.lfw import PairsEvaluator, create_pairs_evaluator, save_roc_curve
from handlers import events

logger = logging.getLogger("faceignite")


def attach(trainer: Engine, model: nn.Module | Callable, lfw_dir: str | None, device,
           image_size: int, *, batch_size: int, every_epochs: int, flip: bool, distance: str,
           pairs_file: str | None = None, every_iterations: int = 0,
           skip_missing: bool = False, output_dir: str | None = None,
           num_workers: int = 0, amp: str = "off", channels_last: bool = False,
           prefix: str = "lfw") -> PairsEvaluator:
    """Validate on the pairs set every ``every_epochs`` epochs, after the last epoch, at the end
    of a run stopped early, and every ``every_iterations`` iterations when given.

    Each validation writes ``<prefix>_accuracy``, ``_accuracy_std``, ``_threshold``,
    ``_val_far1e-3``, ``_val_far1e-2``, ``_auc``, ``_eer`` into ``trainer.state.metrics``, logs
    them in one line, saves ``<output_dir>/roc_<prefix>_epoch<E>_iter<I>.png`` (its path in the
    metric ``<prefix>_roc_figure``) and fires ``ValidationEvents.LFW_COMPLETED``.  The pairs file
    and images are checked now, so a bad ``--lfw`` fails before training.  Returns the evaluator.

    Distributed: attach it in every process; each embeds its share of the images, the metrics
    (computed on the gathered embeddings) are the same everywhere, rank 0 writes the figure.
    """
    events.register(trainer)
    # Training must not die on an unreadable file: its pairs are dropped with a warning.
    evaluator = create_pairs_evaluator(model, lfw_dir, device, image_size, pairs_file, batch_size,
                                       flip, distance, skip_missing, num_workers, amp,
                                       channels_last, skip_undecodable=True)
    done_at = {"iteration": -1}

    def validate(engine: Engine) -> None:
        if engine.state.iteration == done_at["iteration"]:
            return  # already validated at this point (e.g. epoch end = iteration interval)
        done_at["iteration"] = engine.state.iteration
        result = evaluator.run()
        engine.state.metrics.update(result.metrics(prefix))
        epoch, iteration = engine.state.epoch, engine.state.iteration
        if output_dir:
            path = os.path.join(output_dir, f"roc_{prefix}_epoch{epoch:03d}_iter{iteration:07d}.png")
            title = f"{os.path.basename(evaluator.pairs.path)}: epoch {epoch}, iteration {iteration}"
            if idist.get_rank() == 0:  # every rank has the same result; one writes the figure
                save_roc_curve(result, path, title)
            engine.state.metrics[f"{prefix}_roc_figure"] = path
        skipped = f" | {result.skipped_pairs} pairs skipped" if result.skipped_pairs else ""
        logger.info("%s  epoch %d iteration %d | %s | %d pairs in %.1f s%s", prefix, epoch,
                    iteration, result.summary(), result.num_pairs, result.seconds["total"], skipped)
        engine.fire_event(events.ValidationEvents.LFW_COMPLETED)

    def every_or_last(engine: Engine, epoch: int) -> bool:
        return epoch % max(1, every_epochs) == 0 or epoch == engine.state.max_epochs

    event = Events.EPOCH_COMPLETED(event_filter=every_or_last)
    if every_iterations:
        event = event | Events.ITERATION_COMPLETED(every=every_iterations)
    trainer.add_event_handler(event, validate)

    @trainer.on(Events.COMPLETED)
    def validate_final(engine: Engine) -> None:
        """A run stopped mid-epoch (time limit, early stop) still ends with a validation."""
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is not None and not torch.isfinite(torch.as_tensor(loss)).all():
            logger.warning("%s: no final validation, the last training loss is not finite", prefix)
            return
        validate(engine)

    return evaluator
