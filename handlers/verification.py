"""Verification during training on one or more targets (``--lfw``, ``--val_targets``: insightface
``.bin`` files or LFW-format folders), each with its own metrics, log line and ROC PNG.

    specs = targets_for_run(cfg, data)       # --lfw (or the built-in set), then --val_targets
    verification.attach(trainer, model, [s.load() for s in specs], runtime, image_size=112, ...)
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Sequence

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events
from torch import nn

from faceignite.runtime import Runtime
from faceignite.verification import PairsEvaluator, save_roc_curve
from faceignite.verification.targets import (TargetSpec, VerificationTarget, best_metric,
                                    create_target_evaluator, plan_targets)
from handlers import events

logger = logging.getLogger("faceignite")


def lfw_source(cfg: argparse.Namespace, data: Any = None) -> tuple[str | None, str | None] | None:
    """``(folder, pairs file)`` of the target named ``lfw``: ``--lfw``/``--lfw_pairs``, else
    the built-in pairs set of a run on the built-in data without ``--val_targets`` (``data``:
    the run's :class:`~faceignite.data.loaders.FaceData`; without it the folder is unknown yet,
    ``(None, None)``), else None."""
    if cfg.lfw is not None:
        return cfg.lfw, cfg.lfw_pairs
    if getattr(cfg, "val_targets", None):
        return None  # the user's targets replace the built-in pairs set
    if data is not None:
        return (data.lfw_dir, data.lfw_pairs) if data.lfw_dir is not None else None
    return (None, None) if cfg.dataroot is None else None


def targets_for_run(cfg: argparse.Namespace, data: Any = None) -> list[TargetSpec]:
    """The run's targets, checked by path and name (no file read): ``lfw`` first when there is
    one (:func:`lfw_source`), then each ``--val_targets``."""
    return plan_targets(getattr(cfg, "val_targets", None), lfw_source(cfg, data),
                        cfg.lfw_skip_missing, getattr(cfg, "val_pairs", None))


def check_target_options(cfg: argparse.Namespace, data: Any = None) -> str | None:
    """Check ``--val_targets`` and ``--best_by`` (one-line :class:`FaceIgniteError` naming the
    option; no file is read, so it can run before anything is built); returns the metric that
    picks the best checkpoint, or None when there is no target (the held-out accuracy then
    does)."""
    names = [s.name for s in targets_for_run(cfg, data)]
    return best_metric(getattr(cfg, "best_by", None), names)


def attach(trainer: Engine, model: nn.Module | Callable, targets: Sequence[VerificationTarget],
           runtime: Runtime | str, image_size: int, *, batch_size: int, every_epochs: int,
           flip: bool, distance: str, every_iterations: int = 0, output_dir: str | None = None,
           num_workers: int = 0) -> dict[str, PairsEvaluator]:
    """Validate on every target, in order, every ``every_epochs`` epochs, after the last epoch,
    at the end of a run stopped early, and every ``every_iterations`` iterations when given.

    Each target ``t`` writes ``t_accuracy``, ``_accuracy_std``, ``_threshold``,
    ``_val_far1e-3``, ``_val_far1e-2``, ``_auc``, ``_eer`` into ``trainer.state.metrics``, logs
    them in one line starting with ``t``, and saves ``<output_dir>/roc_<t>_epoch<E>_iter<I>.png``
    (its path in the metric ``t_roc_figure``).  Then ``ValidationEvents.VERIFICATION_COMPLETED`` fires,
    once.  The evaluators are built now (a bad target fails before training).  Returns them by
    target name.  The images are embedded on ``runtime`` (a
    :class:`~faceignite.runtime.Runtime`, or a device for fp32), under its evaluation autocast.

    Distributed: attach it in every process; each embeds its share of the images, the metrics
    (computed on the gathered embeddings) are the same everywhere, rank 0 writes the figures.
    """
    events.register(trainer)
    evaluators: dict[str, PairsEvaluator] = {}
    for target in targets:
        # training must not die on an unreadable image: its pairs are dropped with a warning
        evaluators[target.name] = create_target_evaluator(
            model, target, runtime, image_size, batch_size, flip, distance, num_workers,
            skip_undecodable=True)
        events.add_evaluator(trainer, target.name, evaluators[target.name].engine)
        logger.info("verification target %s: %s, %d pairs in %d folds over %d images, %d px%s",
                    target.name, target.pairs.path, len(target.pairs), target.pairs.num_folds,
                    len(target.sources), image_size, ", flip TTA" if flip else "")
    done_at = {"iteration": -1}

    def validate(engine: Engine) -> None:
        if engine.state.iteration == done_at["iteration"]:
            return  # already validated at this point (e.g. epoch end = iteration interval)
        done_at["iteration"] = engine.state.iteration
        epoch, iteration = engine.state.epoch, engine.state.iteration
        for name, evaluator in evaluators.items():
            result = evaluator.run()
            engine.state.metrics.update(result.metrics(name))
            if output_dir:
                path = os.path.join(output_dir,
                                    f"roc_{name}_epoch{epoch:03d}_iter{iteration:07d}.png")
                title = (f"{name} ({os.path.basename(evaluator.pairs.path)}): epoch {epoch}, "
                         f"iteration {iteration}")
                if idist.get_rank() == 0:  # every rank has the same result; one writes it
                    save_roc_curve(result, path, title)
                engine.state.metrics[f"{name}_roc_figure"] = path
            skipped = f" | {result.skipped_pairs} pairs skipped" if result.skipped_pairs else ""
            logger.info("%s  epoch %d iteration %d | %s | %d pairs in %.1f s%s", name, epoch,
                        iteration, result.summary(), result.num_pairs, result.seconds["total"],
                        skipped)
        engine.fire_event(events.ValidationEvents.VERIFICATION_COMPLETED)

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
            logger.warning("%s: no final validation, the last training loss is not finite",
                           ", ".join(evaluators))
            return
        validate(engine)

    return evaluators
