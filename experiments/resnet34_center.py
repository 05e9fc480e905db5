"""ResNet-34 + softmax cross-entropy + center loss: the recipe every other experiment copies.

    python experiments/resnet34_center.py                       # built-in data, a few minutes on CPU
    python experiments/resnet34_center.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from faceignite.checkpoint import Resume, TrainingState
from faceignite.config import parse_args
from faceignite.data import build_face_data
from faceignite.engine import create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from faceignite.run import session
from handlers import (checkpoint, clearml, control, holdout, interrupt, lfw, lr_scheduler,
                      progress, tensorboard)


def center_loss(cfg, num_classes: int) -> SoftmaxCenterLoss:
    """The default criterion: softmax cross-entropy + center loss."""
    return SoftmaxCenterLoss(num_classes, cfg.embedding_dim, cfg.center_loss_weight,
                             cfg.label_smoothing)


def main(argv: Sequence[str] | None = None, name: str = "resnet34_center",
         criterion_factory=center_loss, **defaults) -> dict:
    cfg = parse_args(argv, **defaults)
    with session(cfg, name) as run:
        # data (a resumed run keeps its held-out split)
        resume = Resume.from_options(cfg)
        data = build_face_data(cfg, val_indices=resume.val_indices)
        # model and losses
        model = build_model(cfg.model, cfg.embedding_dim, cfg.pretrained).to(run.device)
        criterion = criterion_factory(cfg, data.num_classes).to(run.device)
        optimizers = build_optimizers(model, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                                      cfg.weight_decay, cfg.center_loss_lr)
        # trainer
        trainer = create_trainer(model, criterion, optimizers, run.device, cfg.amp, cfg.channels_last,
                                 compile_model=cfg.compile)
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
        resume.restore(state)
        # run
        trainer.run(data.train_loader, max_epochs=cfg.epochs)
        return dict(trainer.state.metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
