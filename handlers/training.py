"""The training: one function, read top to bottom — data, model, loss, optimizers, trainer, then
the handlers in their order — and the command line that runs it in one or several processes.

Modelled on pytorch-ignite's ``examples/cifar10/main.py`` (``training(local_rank, config)``).
An experiment is a recipe that picks a model, a loss and defaults and calls :func:`main`::

    from handlers.training import main
    main(sys.argv[1:], name="resnet50_center", model="resnet50")
    main(sys.argv[1:], name="resnet34_arcface", loss="arcface")

Each step is one call of :mod:`handlers.from_options` (the options it needs, nothing else); the
run control (:class:`handlers.control.RunControl`) is attached around the other handlers and owns
its first and last places.  It lives in ``handlers/`` because it composes them (``faceignite/``
never imports ``handlers``).  ``experiments/custom_example.py`` is the same run written out for
copying.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Callable, Sequence

from ignite.engine import Engine

from faceignite.checkpoint import TrainingState
from faceignite.cli import exits_on_error
from faceignite.config import parse_args, plain_config
from faceignite.losses.factory import LOSS_DEFAULTS, LOSSES, CriterionFactory, describe_recipe
from handlers import from_options, progress

Hook = Callable[[Engine, TrainingState], None]
logger = logging.getLogger("faceignite")


def training(local_rank: int, cfg: argparse.Namespace, name: str = "resnet34_center",
             criterion_factory: CriterionFactory = LOSSES["center"],
             hooks: Sequence[Hook] = (), handle_signals: bool = False,
             result: dict | None = None) -> dict:
    """One training process (of ``idist.get_world_size()``); returns (and puts into ``result``)
    the final metrics.  ``hooks``: ``hook(trainer, state)`` calls that attach handlers of your
    own (after the trackers, before the run control's last handlers).  ``handle_signals``:
    Ctrl-C/SIGTERM/SIGUSR1 save a checkpoint and stop (exit code 130 or 75; command-line runs,
    :func:`main`); off, the process's signal handlers are left alone.

    A NaN stop ends with ``SystemExit(3)`` (the run control's); nothing is written to the run
    folder before the resume and data checks passed."""
    with from_options.session(cfg, name) as run:  # nothing written before commit()
        resume = from_options.resume(cfg)  # --resume_path / --finetune; keeps the held-out split

        data = from_options.data(cfg, run, resume)  # this process's share of the images
        runtime = from_options.runtime(cfg, run)  # device, --amp, --channels_last, --compile
        model = from_options.model(cfg, runtime)
        criterion = from_options.criterion(cfg, runtime, criterion_factory, data)
        optimizers = from_options.optimizers(cfg, model, criterion)
        trainer, scaler = from_options.trainer(cfg, runtime, model, criterion, optimizers)
        plan = from_options.validations(cfg, data)  # --lfw, --val_targets, --best_by

        # the handlers, in order; the run control (NaN guard, --max_time, --early_stopping,
        # signals, the agreement of several processes) owns its first and last places
        with from_options.control(trainer, cfg, plan, handle_signals) as control:
            scheduler = from_options.schedule(trainer, cfg, optimizers, data)
            from_options.holdout(trainer, cfg, runtime, model, criterion, data)
            from_options.verification(trainer, cfg, run, runtime, model, plan)
            stats = progress.attach(trainer, optimizers, log_interval=cfg.log_interval)
            state = TrainingState(trainer, model, criterion, optimizers, scheduler, data,
                                  plain_config(cfg), scaler=scaler)
            control.save_with(from_options.checkpoints(trainer, cfg, run, state, plan))
            control.close_at_end(
                from_options.clearml(trainer, cfg, run, name, optimizers,
                                     control.best_checkpoint,
                                     tags=(cfg.model, type(criterion).__name__)),
                from_options.tensorboard(trainer, cfg, run, optimizers))
            for hook in hooks:
                hook(trainer, state)

        resume.restore(state)
        from_options.commit(run, cfg)  # every check passed: config.json and run.log written
        try:
            metrics = control.run(data.train_loader, cfg.epochs)
        except KeyboardInterrupt:  # its checkpoint is saved: the last iteration's line too
            if trainer.state.iteration:
                stats.log_last()
            raise
        if result is not None:
            result.update(metrics)
        return metrics


@exits_on_error
def main(argv: Sequence[str] | None = None, name: str = "resnet34_center", loss: str = "center",
         criterion_factory: CriterionFactory | None = None, hooks: Sequence[Hook] = (),
         description: str | None = None, handle_signals: bool = True,
         **defaults: Any) -> dict:
    """Parse ``argv`` (with ``loss``'s defaults from ``LOSS_DEFAULTS``, then ``defaults``) and
    train in this process, in each process torchrun/srun started, or in ``--nproc_per_node``
    processes spawned here (Ignite's ``idist.Parallel``).  ``criterion_factory(cfg,
    num_classes)`` replaces ``LOSSES[loss]``.  Returns the final metrics; empty when the
    processes were spawned here (their results are in ``run.log`` and the checkpoints).
    ``handle_signals``: the command line's Ctrl-C/SIGTERM checkpoint (False: a library call that
    leaves the process's signal handlers alone, e.g. under a test runner's timeout)."""
    description = description or describe_recipe(name, defaults.get("model", "resnet34"), loss)
    cfg = parse_args(argv, description, **{**LOSS_DEFAULTS[loss], **defaults})
    return from_options.launch(training, cfg, name, criterion_factory or LOSSES[loss],
                               tuple(hooks), handle_signals)
