"""A new experiment composed by hand from the handlers: the README's "Writing an experiment".

    python experiments/custom_example.py                 # built-in data, about a minute on CPU
    python experiments/custom_example.py --dataroot DIR --lfw LFW_DIR --epochs 20
"""
import sys

from faceignite.config import parse_args
from faceignite.data import build_face_data
from faceignite.engine import create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from faceignite.checkpoint import TrainingState
from faceignite.run import session
from handlers import checkpoint, control, holdout, lfw, lr_scheduler, progress, tensorboard


def main(argv=None) -> dict:
    cfg = parse_args(argv, epochs=4, lr_scheduler="cosine")  # this experiment's own defaults
    with session(cfg, "custom_example") as run:
        data = build_face_data(cfg)
        model = build_model("resnet34", embedding_dim=128).to(run.device)
        criterion = SoftmaxCenterLoss(data.num_classes, 128, center_loss_weight=0.01).to(run.device)
        optimizers = build_optimizers(model, criterion, "sgd", lr=0.1, momentum=0.9,
                                      weight_decay=5e-4, center_loss_lr=0.5)
        trainer = create_trainer(model, criterion, optimizers, run.device)

        scheduler = lr_scheduler.attach(trainer, optimizers["model"], lr=0.1, epochs=cfg.epochs,
                                        epoch_length=len(data.train_loader), schedule="cosine")
        holdout.attach(trainer, model, criterion, data.val_loader, run.device,
                       every_iterations=10)                       # like --val_interval 10
        lfw.attach(trainer, model, data.lfw_dir, run.device, cfg.image_size,
                   pairs_file=data.lfw_pairs, every_epochs=2, output_dir=run.output_dir)
        progress.attach(trainer, optimizers, log_interval=5)     # like --log_interval 5
        control.attach(trainer, max_time=600, early_stopping=3,  # --max_time, --early_stopping
                       score_name="lfw_accuracy")
        state = TrainingState(trainer, model, criterion, optimizers, scheduler, data, cfg)
        saved = checkpoint.attach(trainer, state, run.output_dir, n_saved=2, save_interval=20,
                                  best_by="lfw_accuracy")
        tensorboard.attach(trainer, f"{run.output_dir}/tb", log_interval=5, optimizers=optimizers)

        trainer.run(data.train_loader, max_epochs=cfg.epochs)
        print("best checkpoint:", saved.best_checkpoint)
        return dict(trainer.state.metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
