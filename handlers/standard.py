"""The standard training run: one function builds it, one function attaches its handlers in
their order, trackers close however the run ends.

Modelled on pytorch-ignite's ``examples/cifar10`` (``training(local_rank, config)``) and
``ignite.contrib.engines.common.setup_common_training_handlers``: the options are data, the
handler order is owned by :func:`attach_handlers` (not by comments in each experiment), and an
experiment is a recipe that picks a model, a loss and defaults and calls :func:`main`::

    from handlers.standard import main
    main(sys.argv[1:], name="resnet50_center", model="resnet50")
    main(sys.argv[1:], name="resnet34_arcface", loss="arcface")

It lives in ``handlers/`` because it composes them (``faceignite/`` never imports ``handlers``).
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from faceignite.checkpoint import Resume, ResumeOptions, TrainingState
from faceignite.cli import EXIT_NAN, exits_on_error
from faceignite.config import options_group, parse_args, plain_config
from faceignite.data import DataOptions, build_face_data
from faceignite.data.workers import stop_loader_workers
from faceignite.engine import TrainerEvents, create_trainer, stop_together
from faceignite.losses import is_classifying
from faceignite.losses.factory import (LOSS_DEFAULTS, LOSSES, CriterionFactory, LossOptions,
                                       describe_recipe)
from faceignite.models import build_model
from faceignite.models.weight_files import load_field_classifier
from faceignite.optim import build_optimizers
from faceignite.run import Run, default_run_name, parallel, run_folder, session
from faceignite.runtime import Runtime, auto_modules
from handlers import (checkpoint, clearml, control, events, holdout, interrupt, lr_scheduler,
                      progress, tensorboard, verification)

Hook = Callable[[Engine, TrainingState], None]
logger = logging.getLogger("faceignite")
VALIDATION_AGREE_EVERY = 10  # batches between a validation's signal checks (several processes)


@dataclass
class Parts:
    """What a training process is made of, before any handler is attached."""

    data: Any
    model: nn.Module           # plain: evaluators, optimizers, checkpoints use it
    criterion: nn.Module       # plain, a faceignite.losses.Criterion
    optimizers: dict[str, torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    trainer: Engine            # steps the DDP-wrapped modules in a distributed run
    runtime: Runtime           # device, AMP, channels_last, compile, rank: the evaluators' too


@dataclass
class Attached:
    """What :func:`attach_handlers` attached and a caller may need."""

    state: TrainingState
    scheduler: Any
    checkpoints: checkpoint.Checkpointer
    interrupt: interrupt.GracefulInterrupt
    trackers: list = field(default_factory=list)  # each has close()
    stats: Any = None  # handlers.progress.EpochStats

    def close_trackers(self) -> None:
        """Close ClearML and TensorBoard: the run ended, whichever way.  A tracker that closed
        itself at ``COMPLETED`` (ClearML's ``closed``) is not closed twice."""
        for tracker in self.trackers:
            if not getattr(tracker, "closed", False):
                tracker.close()


def build_parts(cfg: argparse.Namespace, run: Run, criterion_factory: CriterionFactory,
                val_indices: Any = None) -> Parts:
    """Data (each process loads its share), model, criterion, optimizers, GradScaler, trainer."""
    data = build_face_data(options_group(cfg, DataOptions), val_indices=val_indices,
                           num_replicas=run.world_size, rank=run.rank)
    vars(cfg).update(data.resolved)  # config.json records the index file, P x K's identities
    runtime = Runtime.create(run.device, cfg.amp, cfg.channels_last, cfg.compile)
    model = runtime.prepare_model(build_model(  # once, before DDP builds its gradient buckets
        cfg.model, cfg.embedding_dim, cfg.pretrained, image_size=cfg.image_size,
        normalize=getattr(cfg, "normalize", None)))
    criterion = criterion_factory(options_group(cfg, LossOptions), data.num_classes)
    if cfg.pretrained and os.path.isfile(cfg.pretrained):  # a facenet-pytorch file, same classes:
        load_field_classifier(criterion, cfg.pretrained)    # its logits are the classifier
    criterion = criterion.to(run.device)
    optimizers = build_optimizers(model, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                                  cfg.weight_decay, cfg.center_loss_lr,
                                  cfg.adam_beta1, cfg.adagrad_lr_decay,
                                  getattr(cfg, "backbone_lr_scale", 1.0))
    optimizers = {k: idist.auto_optim(opt) for k, opt in optimizers.items()}
    # several processes train DDP modules (the criterion too: the classifier and centres get
    # all-reduced gradients; not a --partial_fc one: it is sharded); evaluators and checkpoints
    # use the plain ones
    ddp_model, ddp_criterion = auto_modules(model, criterion, runtime, cfg.sync_bn)
    scaler = runtime.grad_scaler()
    trainer = create_trainer(ddp_model, ddp_criterion, optimizers, runtime, scaler=scaler,
                             image_size=cfg.image_size)
    return Parts(data, model, criterion, optimizers, scaler, trainer, runtime)


def attach_handlers(parts: Parts, cfg: argparse.Namespace, run: Run, name: str,
                    hooks: Sequence[Hook] = (), handle_signals: bool = False) -> Attached:
    """Attach every handler of the standard run to ``parts.trainer``, in the one order that
    works (Ignite runs the handlers of one event in the order they were added):

    1. run control, FIRST at its events: the agreement point (``handlers.control.StopCheck``:
       the device-side NaN guard read, ``--max_time``, Ctrl-C/SIGTERM, all processes agreeing)
       every ``--log_interval``/``--save_interval``/``--val_interval`` iterations and at each
       epoch end — before any validation or checkpoint of that event, so nothing is saved
       after a NaN loss; ``--early_stopping``;
    2. LR schedule (``ITERATION_STARTED``);
    3. validations — held-out (classifying losses only), verification (``--lfw``, each
       ``--val_targets``) — which write their metrics;
    4. progress: the epoch line and ``train_*`` metrics;
    5. checkpoints (they carry the epoch's metrics), then Ctrl-C/SIGTERM, which saves with them
       (``handle_signals``: installed for command-line runs only);
    6. trackers (ClearML, TensorBoard: they read the metrics above);
    7. the caller's ``hooks(trainer, state)``;
    8. last, the stop agreement of several processes for stops decided after the agreement
       point (early stopping), and the NaN read when such a stop ends a single-process run.

    No handler reads a tensor back from the device between two agreement points.
    """
    trainer, data = parts.trainer, parts.data
    # --lfw (the built-in pairs set by default), then each --val_targets
    targets = verification.targets_for_run(cfg, data)
    best_by = verification.check_target_options(cfg, data) or "val_accuracy"  # --best_by
    if targets:
        cfg.best_by = best_by  # config.json records the metric used
    best_event = (events.ValidationEvents.VERIFICATION_COMPLETED if targets
                  else events.ValidationEvents.HOLDOUT_COMPLETED)
    checkpoints: list[checkpoint.Checkpointer] = []  # the NaN message names the last one
    # the agreement points: one host read there, none between (50 iterations without log lines)
    agree_every = tuple(k for k in (cfg.log_interval, cfg.save_interval, cfg.val_interval)
                        if k > 0) or (50,)
    controls = control.attach(trainer, max_time=cfg.max_time, early_stopping=cfg.early_stopping,
                              score_name=best_by, score_event=best_event, every=agree_every,
                              last_checkpoint=lambda: checkpoints[0].last_checkpoint
                              if checkpoints else None)
    control.attach_first_epoch_check(trainer)  # exit 2, not 0, when nothing decodes
    scheduler = lr_scheduler.attach(trainer, parts.optimizers["model"], cfg.lr, cfg.epochs,
                                    len(data.train_loader), **lr_scheduler.schedule_options(cfg))
    validations = []  # (name, evaluator engine): a signal stops them at their next batch
    tracked: dict[str, Engine] = {}  # the same engines by tag: the trackers log from them
    if data.val_loader is not None and is_classifying(parts.criterion):
        evaluator = holdout.attach(trainer, parts.model, parts.criterion, data.val_loader,
                                   parts.runtime, every_epochs=1,
                                   every_iterations=cfg.val_interval)
        validations.append(("held-out validation", evaluator))
        tracked["holdout"] = evaluator
    if targets:
        evaluators = verification.attach(
            trainer, parts.model, [t.load() for t in targets], parts.runtime, cfg.image_size,
            batch_size=cfg.lfw_batch_size, every_epochs=cfg.lfw_validation_epoch_interval,
            every_iterations=cfg.val_interval, flip=cfg.lfw_flip, distance=cfg.distance,
            output_dir=run.output_dir, num_workers=cfg.num_workers)
        validations += [(f"{name} validation", e.engine) for name, e in evaluators.items()]
        tracked.update((name, e.engine) for name, e in evaluators.items())
    stats = progress.attach(trainer, parts.optimizers, log_interval=cfg.log_interval)
    state = TrainingState(trainer, parts.model, parts.criterion, parts.optimizers, scheduler,
                          data, plain_config(cfg), scaler=parts.scaler)
    checkpoints.append(checkpoint.attach(trainer, state, run.output_dir, n_saved=cfg.n_saved,
                                         save_interval=cfg.save_interval, best_by=best_by,
                                         best_event=best_event))
    signals = interrupt.COMMAND_LINE_SIGNALS if handle_signals else ()
    stop = interrupt.attach(trainer, checkpoints[0].save_now, signals=signals,
                            stop_check=controls["stop_check"])
    for what, evaluator in validations:  # a long validation does not delay the checkpoint
        stop.guard(evaluator, every=VALIDATION_AGREE_EVERY, what=what)
    attached = Attached(state, scheduler, checkpoints[0], stop, stats=stats)
    tags = [cfg.model, type(parts.criterion).__name__]
    tracker = clearml.attach(trainer, run.output_dir, mode=cfg.clearml, task_name=name,
                             tags=tags, hparams=vars(cfg), log_interval=cfg.log_interval,
                             optimizers=parts.optimizers,
                             best_checkpoint=lambda: attached.checkpoints.best_checkpoint,
                             upload_model=cfg.clearml_upload_model,
                             store_diff=cfg.clearml_store_diff, evaluators=tracked)
    if tracker is not None:
        attached.trackers.append(tracker)
    if cfg.tensorboard:  # one sub-folder per run: tensorboard --logdir DIR compares them
        tb_dir = os.path.join(cfg.tensorboard, os.path.basename(run.output_dir))
        tb = tensorboard.attach(trainer, tb_dir, log_interval=cfg.log_interval,
                                optimizers=parts.optimizers, hparams=vars(cfg),
                                evaluators=tracked)
        if tb is not None:
            attached.trackers.append(tb)
    for hook in hooks:
        hook(trainer, state)
    control.attach_last(trainer, controls)
    stop_together(trainer, every=agree_every)
    return attached


def training(local_rank: int, cfg: argparse.Namespace, name: str = "resnet34_center",
             criterion_factory: CriterionFactory = LOSSES["center"],
             result: dict | None = None, hooks: Sequence[Hook] = (),
             handle_signals: bool = False) -> dict:
    """One training process (of ``idist.get_world_size()``); returns (and puts into ``result``)
    the final metrics.  ``hooks``: ``hook(trainer, state)`` calls to add handlers of your own.
    ``handle_signals``: Ctrl-C/SIGTERM/SIGUSR1 save a checkpoint and stop (command-line runs:
    :func:`main`; exit code 130 or 75);
    off, a library call leaves the process's signal handlers alone.

    A run stopped by a NaN loss ends with ``SystemExit(EXIT_NAN)`` (exit code 3), never as a
    success; nothing is written to the run folder before the resume and data checks passed."""
    with session(cfg, name, run_dir=run_folder(cfg, name), deferred=True,
                 folder_name=default_run_name(name, cfg.model)) as run:
        cfg.name = os.path.basename(run.output_dir)  # the folder used, in config.json
        resume = Resume.from_options(options_group(cfg, ResumeOptions))  # keeps its split
        vars(cfg).update(resume.kept_options)  # and its --normalize, --augment
        parts = build_parts(cfg, run, criterion_factory, val_indices=resume.val_indices)
        attached = attach_handlers(parts, cfg, run, name, hooks, handle_signals)
        nan = []
        parts.trainer.add_event_handler(TrainerEvents.NAN_DETECTED, lambda _: nan.append(1))
        try:
            resume.restore(attached.state)
            run.commit()  # every check passed: now config.json and run.log are written
            parts.trainer.run(parts.data.train_loader, max_epochs=cfg.epochs)
        except KeyboardInterrupt:  # its checkpoint is saved: the last iteration's line too
            if attached.stats is not None and parts.trainer.state.iteration:
                attached.stats.log_last()
            raise
        finally:  # a NaN stop, an interrupt or an error skips COMPLETED: close them here
            attached.close_trackers()
            stop_loader_workers()  # not at exit: a 5 s join per pinned worker there
        if nan:  # the NaN guard logged where and which checkpoint to resume from
            raise SystemExit(EXIT_NAN)
        metrics = dict(parts.trainer.state.metrics)
        if run.rank == 0:
            logger.info("done: %s", attached.checkpoints.summary(metrics))
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
    processes spawned here (Ignite's ``idist.Parallel``).  ``criterion_factory(options,
    num_classes)`` (``options``: the :class:`~faceignite.losses.factory.LossOptions` group)
    replaces ``LOSSES[loss]``.  Returns the final metrics; empty when the
    processes were spawned here (their results are in ``run.log`` and the checkpoints).
    ``handle_signals``: the command line's Ctrl-C/SIGTERM checkpoint (False: a library call that
    leaves the process's signal handlers alone, e.g. under a test runner's timeout)."""
    description = description or describe_recipe(name, defaults.get("model", "resnet34"), loss)
    cfg = parse_args(argv, description, **{**LOSS_DEFAULTS[loss], **defaults})
    verification.check_target_options(cfg)  # --val_targets, --best_by: fail before anything is built
    factory = criterion_factory or LOSSES[loss]
    result: dict = {}
    with parallel(cfg) as launcher:
        launcher.run(training, cfg, name, factory, result, tuple(hooks), handle_signals)
    return result
