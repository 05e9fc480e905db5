"""Each step of a training run from the command-line options: one call builds one part or
attaches one handler with the options it needs.

The argparse namespace stops here: what these functions call (``faceignite/`` and the other
``handlers/`` modules) takes plain arguments.  The standard run (:mod:`handlers.training`) and the
template (``experiments/custom_example.py``) are one line of these per step; replace a call by
the handler's own ``attach(...)`` to change more than the options allow.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch import nn

from faceignite.checkpoint import Resume, ResumeOptions
from faceignite.cli import fail
from faceignite.config import options_group, plain_config
from faceignite.data import DataOptions, build_face_data
from faceignite.engine import create_trainer
from faceignite.errors import FaceIgniteError
from faceignite.losses import is_classifying
from faceignite.losses.factory import CriterionFactory, LossOptions
from faceignite.models import build_model
from faceignite.models.weight_files import load_field_classifier
from faceignite.optim import build_optimizers
from faceignite.run import Run, default_run_name, launched_externally, parallel, run_folder
from faceignite.run import session as run_session
from faceignite.runtime import Runtime, auto_modules, resolve_gpus
from handlers import checkpoint as checkpoint_handler
from handlers import clearml as clearml_handler
from handlers import events
from handlers import holdout as holdout_handler
from handlers import lr_scheduler
from handlers import tensorboard as tensorboard_handler
from handlers import verification as verification_handler
from handlers.control import RunControl
from handlers.interrupt import COMMAND_LINE_SIGNALS

NO_LOG_AGREE_EVERY = 50  # iterations between agreement points when no interval is set


# --------------------------------------------------------------------------- the run
def session(cfg: argparse.Namespace, name: str, folder_name: str | None = None):
    """The run's folder, log and seed (:func:`faceignite.run.session`, deferred: nothing is
    written before :func:`commit`): the resumed run's folder with ``--resume_path`` (``auto``
    resolved into ``cfg``), else a new ``--output_dir/<folder_name or name>-<time>`` (or
    ``--name``)."""
    cfg.resume_path, run_dir = run_folder(cfg.resume_path, cfg.finetune, cfg.output_dir, name)
    return run_session(name, cfg.output_dir, device=cfg.device, amp=cfg.amp, seed=cfg.seed,
                       run_dir=run_dir, run_name=cfg.name, deferred=True,
                       folder_name=folder_name or default_run_name(name, cfg.model))


def commit(run: Run, cfg: argparse.Namespace) -> None:
    """Every check passed: write ``config.json`` (the options as they are now) and ``run.log``."""
    cfg.name = os.path.basename(run.output_dir)  # the folder used
    run.commit(plain_config(cfg))


# --------------------------------------------------------------------------- the parts
def resume(cfg: argparse.Namespace) -> Resume:
    """``--resume_path`` / ``--finetune`` (checked now, restored later); a resumed run keeps
    its held-out split and its checkpoint's ``--normalize``/``--augment`` (into ``cfg``)."""
    found = Resume.from_options(options_group(cfg, ResumeOptions))
    vars(cfg).update(found.kept_options)
    return found


def data(cfg: argparse.Namespace, run: Run, resumed: Resume) -> Any:
    """This process's share of the training images (and the held-out split a resumed run
    keeps): a :class:`faceignite.data.loaders.FaceData`; what it resolved (index file, P x K
    identities) goes into ``cfg`` for ``config.json``."""
    found = build_face_data(options_group(cfg, DataOptions), val_indices=resumed.val_indices,
                            num_replicas=run.world_size, rank=run.rank)
    vars(cfg).update(found.resolved)
    return found


def runtime(cfg: argparse.Namespace, run: Run) -> Runtime:
    """Where and how the run computes: the run's device, ``--amp``, ``--channels_last``,
    ``--compile``, this process's rank."""
    return Runtime.create(run.device, cfg.amp, cfg.channels_last, cfg.compile)


def model(cfg: argparse.Namespace, rt: Runtime) -> nn.Module:
    """``--model`` prepared for ``rt`` (device, channels_last: once, before DDP)."""
    return rt.prepare_model(build_model(cfg.model, cfg.embedding_dim, cfg.pretrained,
                                        image_size=cfg.image_size,
                                        normalize=getattr(cfg, "normalize", None)))


def criterion(cfg: argparse.Namespace, rt: Runtime, factory: CriterionFactory, data: Any
              ) -> nn.Module:
    """``factory(loss options, num_classes)`` (a :data:`faceignite.losses.factory.LOSSES`
    entry) on ``rt``'s device; with ``--pretrained`` a facenet-pytorch file of the same
    identities, its logits layer becomes the classifier."""
    loss = factory(options_group(cfg, LossOptions), data.num_classes)
    if cfg.pretrained and os.path.isfile(cfg.pretrained):
        load_field_classifier(loss, cfg.pretrained)
    return loss.to(rt.device)


def optimizers(cfg: argparse.Namespace, net: nn.Module, criterion: nn.Module
               ) -> dict[str, torch.optim.Optimizer]:
    """``--optimizer`` for the model (and the criterion's classifier), SGD at
    ``--center_loss_lr`` for centres; Ignite's ``auto_optim`` (several processes)."""
    found = build_optimizers(net, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                             cfg.weight_decay, cfg.center_loss_lr, cfg.adam_beta1,
                             cfg.adagrad_lr_decay, getattr(cfg, "backbone_lr_scale", 1.0))
    return {k: idist.auto_optim(opt) for k, opt in found.items()}


def trainer(cfg: argparse.Namespace, rt: Runtime, net: nn.Module, criterion: nn.Module,
            optims: dict[str, torch.optim.Optimizer]) -> tuple[Engine, torch.amp.GradScaler]:
    """The trainer on ``rt`` and its fp16 GradScaler.  Several processes: it steps DDP modules
    (``--sync_bn``; the criterion too, unless a ``--partial_fc`` one: sharded); evaluators and
    checkpoints use the plain ``net`` and ``criterion``."""
    ddp_model, ddp_criterion = auto_modules(net, criterion, rt, cfg.sync_bn)
    scaler = rt.grad_scaler()
    engine = create_trainer(ddp_model, ddp_criterion, optims, rt, scaler=scaler,
                            image_size=cfg.image_size)
    return engine, scaler


# --------------------------------------------------------------------------- the handlers
@dataclass
class Validations:
    """What the run validates on and which metric picks the best checkpoint (and early
    stopping): ``--lfw`` (or the built-in pairs) and each ``--val_targets`` (checked by path
    and name, not read yet), ``--best_by`` and the event after which it is known."""

    targets: list = field(default_factory=list)  # faceignite.verification.targets.TargetSpec
    best_by: str = "val_accuracy"
    best_event: Any = events.ValidationEvents.HOLDOUT_COMPLETED


def validations(cfg: argparse.Namespace, data: Any) -> Validations:
    """The run's :class:`Validations`; ``cfg.best_by`` records the metric in ``config.json``."""
    targets = verification_handler.targets_for_run(cfg, data)
    if not targets:
        return Validations()
    cfg.best_by = verification_handler.check_target_options(cfg, data)
    return Validations(targets, cfg.best_by, events.ValidationEvents.VERIFICATION_COMPLETED)


def agreement_points(cfg: argparse.Namespace) -> tuple[int, ...]:
    """The iterations where all processes read and agree on every reason to stop (one host
    read there, none between): ``--log_interval``, ``--save_interval``, ``--val_interval``."""
    return tuple(k for k in (cfg.log_interval, cfg.save_interval, cfg.val_interval)
                 if k > 0) or (NO_LOG_AGREE_EVERY,)


def control(engine: Engine, cfg: argparse.Namespace, plan: Validations,
            handle_signals: bool = True) -> RunControl:
    """The :class:`~handlers.control.RunControl` of ``--max_time``, ``--early_stopping`` (on
    the best-checkpoint metric), the NaN guard and, ``handle_signals``, Ctrl-C/SIGTERM/SIGUSR1
    (a command line; off, the process's signal handlers are left alone)."""
    return RunControl(engine, max_time=cfg.max_time, early_stopping=cfg.early_stopping,
                      score_name=plan.best_by, score_event=plan.best_event,
                      every=agreement_points(cfg),
                      signals=COMMAND_LINE_SIGNALS if handle_signals else ())


def schedule(engine: Engine, cfg: argparse.Namespace, optims: dict, data: Any) -> Any:
    """``--lr_scheduler`` (warm-up, step/multistep/cosine) on the model's optimizer, stepped
    every iteration; returns the scheduler (a checkpoint saves it)."""
    return lr_scheduler.attach(engine, optims["model"], cfg.lr, cfg.epochs,
                               len(data.train_loader), **lr_scheduler.schedule_options(cfg))


def holdout(engine: Engine, cfg: argparse.Namespace, rt: Runtime, net: nn.Module,
            criterion: nn.Module, data: Any) -> Engine | None:
    """The held-out split's accuracy every epoch and every ``--val_interval`` iterations
    (classifying losses with a held-out split; else None)."""
    if data.val_loader is None or not is_classifying(criterion):
        return None
    return holdout_handler.attach(engine, net, criterion, data.val_loader, rt,
                                  every_iterations=cfg.val_interval)


def verification(engine: Engine, cfg: argparse.Namespace, run: Run, rt: Runtime,
                 net: nn.Module, plan: Validations) -> dict:
    """Verification on every target of ``plan`` (read now: a bad file fails before training)
    every ``--lfw_validation_epoch_interval`` epochs and ``--val_interval`` iterations."""
    if not plan.targets:
        return {}
    return verification_handler.attach(
        engine, net, [t.load() for t in plan.targets], rt, cfg.image_size,
        batch_size=cfg.lfw_batch_size, every_epochs=cfg.lfw_validation_epoch_interval,
        every_iterations=cfg.val_interval, flip=cfg.lfw_flip, distance=cfg.distance,
        output_dir=run.output_dir, num_workers=cfg.num_workers)


def checkpoints(engine: Engine, cfg: argparse.Namespace, run: Run, state: Any,
                plan: Validations) -> checkpoint_handler.Checkpointer:
    """The last ``--n_saved`` checkpoints (every epoch, every ``--save_interval``) and the best
    by ``plan.best_by``, in the run folder."""
    return checkpoint_handler.attach(engine, state, run.output_dir, n_saved=cfg.n_saved,
                                     save_interval=cfg.save_interval, best_by=plan.best_by,
                                     best_event=plan.best_event)


def clearml(engine: Engine, cfg: argparse.Namespace, run: Run, name: str, optims: dict,
            best_checkpoint: Callable[[], str | None], tags: tuple = ()) -> Any:
    """ClearML (``--clearml``: a task named ``name``, the options, the scalars — the
    validations' from the evaluator engines attached before it (``events.evaluators``) —, the
    ROC images, ``--clearml_upload_model``: the file ``best_checkpoint()``); None when off or on
    other ranks."""
    return clearml_handler.attach(engine, run.output_dir, mode=cfg.clearml, task_name=name,
                                  tags=list(tags), hparams=vars(cfg),
                                  log_interval=cfg.log_interval, optimizers=optims,
                                  best_checkpoint=best_checkpoint,
                                  upload_model=cfg.clearml_upload_model,
                                  store_diff=cfg.clearml_store_diff,
                                  evaluators=events.evaluators(engine))


def tensorboard(engine: Engine, cfg: argparse.Namespace, run: Run, optims: dict) -> Any:
    """TensorBoard in ``--tensorboard DIR/<run folder>`` (one sub-folder per run:
    ``tensorboard --logdir DIR`` compares them), the validations' scalars from the evaluator
    engines attached before it; None without the option."""
    if not cfg.tensorboard:
        return None
    return tensorboard_handler.attach(
        engine, os.path.join(cfg.tensorboard, os.path.basename(run.output_dir)),
        log_interval=cfg.log_interval, optimizers=optims, hparams=vars(cfg),
        evaluators=events.evaluators(engine))


# --------------------------------------------------------------------------- launching
def launch(training: Callable[..., Any], cfg: argparse.Namespace, *args: Any) -> dict:
    """Check ``--val_targets``/``--best_by`` (before anything is built), then run
    ``training(local_rank, cfg, *args, result)`` in this process, in each process
    torchrun/srun started, or in ``--nproc_per_node`` processes spawned here.  Returns
    ``result`` as filled by ``training`` (empty when the processes were spawned here: their
    results are in ``run.log`` and the checkpoints)."""
    verification_handler.check_target_options(cfg)
    if cfg.gpus and launched_externally():
        logging.getLogger("faceignite").warning(
            "--gpus %s ignored: torchrun/srun started the processes, one GPU each", cfg.gpus)
    else:  # --gpus 0,1: one process per GPU (the CPU when there is no CUDA)
        try:
            vars(cfg).update(resolve_gpus(cfg.gpus, cfg.device))
        except FaceIgniteError as exc:
            fail(exc)
    result: dict = {}
    with parallel(cfg.nproc_per_node, cfg.backend, cfg.device, cfg.start_method) as launcher:
        launcher.run(training, cfg, *args, result)
    return result
