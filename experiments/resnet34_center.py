"""ResNet-34 + softmax cross-entropy + center loss: the recipe every other experiment copies.

    python experiments/resnet34_center.py                       # built-in data, a few minutes on CPU
    python experiments/resnet34_center.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160
"""
from __future__ import annotations

import sys
from typing import Sequence

from faceignite.config import parse_args
from faceignite.data import build_face_data
from faceignite.engine import create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from faceignite.run import session
from handlers import holdout, lr_scheduler, progress


def main(argv: Sequence[str] | None = None, name: str = "resnet34_center", **defaults) -> dict:
    cfg = parse_args(argv, **defaults)
    with session(cfg, name) as run:
        # data
        data = build_face_data(cfg)
        # model and losses
        model = build_model(cfg.model, cfg.embedding_dim, cfg.pretrained).to(run.device)
        criterion = SoftmaxCenterLoss(data.num_classes, cfg.embedding_dim, cfg.center_loss_weight,
                                      cfg.label_smoothing).to(run.device)
        optimizers = build_optimizers(model, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                                      cfg.weight_decay, cfg.center_loss_lr)
        # trainer
        trainer = create_trainer(model, criterion, optimizers, run.device, cfg.amp, cfg.channels_last)
        # handlers
        lr_scheduler.attach(trainer, optimizers["model"], cfg.lr, cfg.epochs, len(data.train_loader),
                            schedule=cfg.lr_scheduler, warmup_epochs=cfg.warmup_epochs,
                            milestones=cfg.lr_milestones, step_epochs=cfg.lr_step, gamma=cfg.lr_gamma)
        if data.val_loader is not None:
            holdout.attach(trainer, model, criterion, data.val_loader, run.device,
                           every_iterations=cfg.val_interval, amp=cfg.amp)
        progress.attach(trainer, optimizers)
        # run
        trainer.run(data.train_loader, max_epochs=cfg.epochs)
        return dict(trainer.state.metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
