"""ResNet-34 + softmax cross-entropy + center loss: the recipe every other experiment copies.

    python experiments/resnet34_center.py                       # built-in data, a few minutes on CPU
    python experiments/resnet34_center.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160
    torchrun --nproc_per_node 4 experiments/resnet34_center.py --dataroot ...   # 4 GPUs
    python experiments/resnet34_center.py --nproc_per_node 4 --dataroot ...     # the same
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

import ignite.distributed as idist
from ignite.engine import Engine

from faceignite.checkpoint import Resume, TrainingState
from faceignite.config import parse_args
from faceignite.data import build_face_data
from faceignite.engine import auto_modules, create_trainer, stop_together
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from faceignite.run import parallel, session
from handlers import (checkpoint, clearml, control, holdout, interrupt, lfw, lr_scheduler,
                      progress, tensorboard)


def center_loss(cfg, num_classes: int) -> SoftmaxCenterLoss:
    """The default criterion: softmax cross-entropy + center loss."""
    return SoftmaxCenterLoss(num_classes, cfg.embedding_dim, cfg.center_loss_weight,
                             cfg.label_smoothing)


Hook = Callable[[Engine, TrainingState], None]


def training(local_rank: int, cfg, name: str = "resnet34_center", criterion_factory=center_loss,
             result: dict | None = None, hooks: Sequence[Hook] = ()) -> dict:
    """One training process (of ``idist.get_world_size()``); returns (and puts into ``result``)
    the final metrics.  ``hooks``: ``hook(trainer, state)`` calls to add handlers of your own."""
    with session(cfg, name) as run:
        # data (a resumed run keeps its held-out split); each process loads its share
        resume = Resume.from_options(cfg)
        data = build_face_data(cfg, val_indices=resume.val_indices,
                               num_replicas=run.world_size, rank=run.rank)
        # model and losses
        model = build_model(cfg.model, cfg.embedding_dim, cfg.pretrained,
                            image_size=cfg.image_size).to(run.device)
        criterion = criterion_factory(cfg, data.num_classes).to(run.device)
        optimizers = build_optimizers(model, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                                      cfg.weight_decay, cfg.center_loss_lr)
        optimizers = {k: idist.auto_optim(opt) for k, opt in optimizers.items()}
        # trainer: several processes train DDP modules (the criterion too: the classifier and
        # centres get all-reduced gradients); evaluators and checkpoints use the plain ones
        ddp_model, ddp_criterion = auto_modules(model, criterion, run.device, cfg.sync_bn,
                                                cfg.channels_last)
        trainer = create_trainer(ddp_model, ddp_criterion, optimizers, run.device, cfg.amp,
                                 cfg.channels_last, compile_model=cfg.compile)
        # handlers
        scheduler = lr_scheduler.attach(
            trainer, optimizers["model"], cfg.lr, cfg.epochs, len(data.train_loader),
            schedule=cfg.lr_scheduler, warmup_epochs=cfg.warmup_epochs,
            milestones=cfg.lr_milestones, step_epochs=cfg.lr_step, gamma=cfg.lr_gamma)
        if data.val_loader is not None and hasattr(criterion, "logits"):  # classifying losses
            holdout.attach(trainer, model, criterion, data.val_loader, run.device,
                           every_iterations=cfg.val_interval, amp=cfg.amp)
        if data.lfw_dir is not None:  # the built-in pairs set by default, --lfw for real LFW
            lfw.attach(trainer, model, data.lfw_dir, run.device, cfg.image_size,
                       pairs_file=data.lfw_pairs, batch_size=cfg.lfw_batch_size,
                       every_epochs=cfg.lfw_validation_epoch_interval,
                       every_iterations=cfg.val_interval, flip=cfg.lfw_flip, distance=cfg.distance,
                       skip_missing=cfg.lfw_skip_missing, output_dir=run.output_dir,
                       num_workers=cfg.num_workers, amp=cfg.amp, channels_last=cfg.channels_last)
        progress.attach(trainer, optimizers, log_interval=cfg.log_interval)
        # run control: NaN guard, --max_time, --early_stopping (before checkpoints: a stopped
        # run still gets its final checkpoint)
        best_by = "lfw_accuracy" if data.lfw_dir is not None else "val_accuracy"
        control.attach(trainer, max_time=cfg.max_time, early_stopping=cfg.early_stopping,
                       score_name=best_by, last_checkpoint=lambda: checkpoints.last_checkpoint)
        # checkpoints (every epoch, best, on Ctrl-C/SIGTERM); --resume_path / --finetune
        state = TrainingState(trainer, model, criterion, optimizers, scheduler, data, cfg)
        checkpoints = checkpoint.attach(
            trainer, state, run.output_dir, n_saved=cfg.n_saved, save_interval=cfg.save_interval,
            best_by=best_by)
        interrupt.attach(trainer, checkpoints.save_now)
        # tracking (last, so it closes after the final validation and checkpoint)
        tags = [cfg.model, type(criterion).__name__]
        clearml.attach(trainer, run.output_dir, mode=cfg.clearml, task_name=name, tags=tags,
                       hparams=vars(cfg), log_interval=cfg.log_interval, optimizers=optimizers,
                       best_checkpoint=lambda: checkpoints.best_checkpoint,
                       upload_model=cfg.clearml_upload_model)
        if cfg.tensorboard:  # one sub-folder per run: tensorboard --logdir DIR compares them
            tb_dir = os.path.join(cfg.tensorboard, os.path.basename(run.output_dir))
            tensorboard.attach(trainer, tb_dir, log_interval=cfg.log_interval,
                               optimizers=optimizers, hparams=vars(cfg))
        for hook in hooks:
            hook(trainer, state)
        stop_together(trainer)  # last: several processes stop at the same iteration
        resume.restore(state)
        # run
        trainer.run(data.train_loader, max_epochs=cfg.epochs)
        metrics = dict(trainer.state.metrics)
        if result is not None:
            result.update(metrics)
        return metrics


def main(argv: Sequence[str] | None = None, name: str = "resnet34_center",
         criterion_factory=center_loss, hooks: Sequence[Hook] = (), **defaults) -> dict:
    """Train in this process, in each process torchrun/srun started, or in ``--nproc_per_node``
    processes spawned here (Ignite's ``idist.Parallel``).  Returns the final metrics; empty when
    the processes were spawned here (their results are in ``run.log`` and the checkpoints)."""
    cfg = parse_args(argv, **defaults)
    result: dict = {}
    with parallel(cfg) as launcher:
        launcher.run(training, cfg, name, criterion_factory, result, tuple(hooks))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
