"""A new experiment composed by hand from the library and the handlers: copy it, change a line.

    python experiments/custom_example.py                         # built-in data, a few minutes on CPU
    python experiments/custom_example.py --dataroot DIR --lfw LFW_DIR --epochs 20
    python experiments/custom_example.py --resume_path runs/custom_example-.../   # continue it
    python experiments/custom_example.py --nproc_per_node 2 --backend gloo        # 2 processes

Every option of ``-h`` is honoured (this file's own choices are only defaults: cosine schedule,
4 epochs, a validation every 10 iterations); resume, Ctrl-C/SIGTERM, several processes and
ClearML/TensorBoard work as in the standard run (``handlers/standard.py``, which this file
writes out step by step).
"""
import os
import sys

import ignite.distributed as idist

from faceignite.checkpoint import Resume, ResumeOptions, TrainingState
from faceignite.cli import EXIT_NAN, exits_on_error
from faceignite.config import options_group, parse_args, plain_config
from faceignite.data import DataOptions, build_face_data
from faceignite.engine import TrainerEvents, create_trainer, stop_together
from faceignite.losses import is_classifying
from faceignite.losses.factory import LossOptions, center_loss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from faceignite.run import parallel, run_folder, session
from faceignite.runtime import Runtime, auto_modules
from handlers import (checkpoint, clearml, control, events, holdout, interrupt, lr_scheduler,
                      progress, tensorboard, verification)

NAME = "custom_example"
DEFAULTS = dict(epochs=4, lr_scheduler="cosine", val_interval=10)  # this experiment's own


def training(local_rank: int, cfg, result: dict) -> None:
    """One process of the run (every process runs all of it; rank 0 writes the files)."""
    with session(cfg, NAME, run_dir=run_folder(cfg, NAME), deferred=True) as run:
        resume = Resume.from_options(options_group(cfg, ResumeOptions))  # keeps the split
        vars(cfg).update(resume.kept_options)  # and --normalize/--augment of the checkpoint
        data = build_face_data(options_group(cfg, DataOptions), val_indices=resume.val_indices,
                               num_replicas=run.world_size, rank=run.rank)
        vars(cfg).update(data.resolved)  # recorded in config.json
        runtime = Runtime.create(run.device, cfg.amp, cfg.channels_last, cfg.compile)
        model = runtime.prepare_model(build_model(cfg.model, cfg.embedding_dim, cfg.pretrained,
                                                  image_size=cfg.image_size,
                                                  normalize=cfg.normalize))
        criterion = center_loss(options_group(cfg, LossOptions),  # --partial_fc: sharded
                                data.num_classes).to(run.device)
        optimizers = build_optimizers(model, criterion, cfg.optimizer, cfg.lr, cfg.momentum,
                                      cfg.weight_decay, cfg.center_loss_lr,
                                      cfg.adam_beta1, cfg.adagrad_lr_decay,
                                      cfg.backbone_lr_scale)
        optimizers = {k: idist.auto_optim(opt) for k, opt in optimizers.items()}
        ddp_model, ddp_criterion = auto_modules(model, criterion, runtime, cfg.sync_bn)
        scaler = runtime.grad_scaler()
        trainer = create_trainer(ddp_model, ddp_criterion, optimizers, runtime, scaler=scaler,
                                 image_size=cfg.image_size)

        # handlers, in this order (see handlers.standard.attach_handlers): control first (the
        # agreement point: NaN read, --max_time, signals), schedule, validations, progress,
        # checkpoints, interrupt, trackers, then the stop agreement of several processes
        targets = verification.targets_for_run(cfg, data)  # --lfw (or built-in), --val_targets
        best_by = verification.check_target_options(cfg, data) or "val_accuracy"  # --best_by
        best_event = (events.ValidationEvents.VERIFICATION_COMPLETED if targets
                      else events.ValidationEvents.HOLDOUT_COMPLETED)
        agree_every = tuple(k for k in (cfg.log_interval, cfg.save_interval, cfg.val_interval)
                            if k > 0) or (50,)  # one host read there, none between
        controls = control.attach(trainer, max_time=cfg.max_time,
                                  early_stopping=cfg.early_stopping, score_name=best_by,
                                  score_event=best_event, every=agree_every,
                                  last_checkpoint=lambda: saved.last_checkpoint)
        scheduler = lr_scheduler.attach(trainer, optimizers["model"], cfg.lr, cfg.epochs,
                                        len(data.train_loader),
                                        **lr_scheduler.schedule_options(cfg))
        tracked = {}  # the validations' engines by tag: the trackers log from them
        if data.val_loader is not None and is_classifying(criterion):
            tracked["holdout"] = holdout.attach(trainer, model, criterion, data.val_loader,
                                                runtime, every_iterations=cfg.val_interval)
        if targets:
            tracked.update((n, e.engine) for n, e in verification.attach(
                trainer, model, [t.load() for t in targets], runtime,
                cfg.image_size, batch_size=cfg.lfw_batch_size,
                every_epochs=cfg.lfw_validation_epoch_interval,
                every_iterations=cfg.val_interval, flip=cfg.lfw_flip,
                distance=cfg.distance, output_dir=run.output_dir,
                num_workers=cfg.num_workers).items())
        progress.attach(trainer, optimizers, log_interval=cfg.log_interval)
        state = TrainingState(trainer, model, criterion, optimizers, scheduler, data,
                              plain_config(cfg), scaler=scaler)
        saved = checkpoint.attach(trainer, state, run.output_dir, n_saved=cfg.n_saved,
                                  save_interval=cfg.save_interval, best_by=best_by,
                                  best_event=best_event)
        interrupt.attach(trainer, saved.save_now, signals=interrupt.COMMAND_LINE_SIGNALS,
                         stop_check=controls["stop_check"])  # a command line: own the signals
        trackers = [clearml.attach(trainer, run.output_dir, mode=cfg.clearml, task_name=NAME,
                                   hparams=vars(cfg), log_interval=cfg.log_interval,
                                   optimizers=optimizers,
                                   best_checkpoint=lambda: saved.best_checkpoint,
                                   upload_model=cfg.clearml_upload_model,
                                   store_diff=cfg.clearml_store_diff, evaluators=tracked)]
        if cfg.tensorboard:
            trackers.append(tensorboard.attach(
                trainer, os.path.join(cfg.tensorboard, os.path.basename(run.output_dir)),
                log_interval=cfg.log_interval, optimizers=optimizers, hparams=vars(cfg),
                evaluators=tracked))
        control.attach_last(trainer, controls)
        stop_together(trainer, every=agree_every)

        nan = []  # a NaN stop must not end as a success
        trainer.add_event_handler(TrainerEvents.NAN_DETECTED, lambda _: nan.append(1))
        try:
            resume.restore(state)
            run.commit()  # the checks passed: config.json and run.log are written from now on
            trainer.run(data.train_loader, max_epochs=cfg.epochs)
        finally:  # also after a NaN stop or an interrupt, which skip COMPLETED
            for tracker in trackers:
                if tracker is not None and not getattr(tracker, "closed", False):
                    tracker.close()
        if nan:
            raise SystemExit(EXIT_NAN)  # exit code 3: the NaN guard said where to resume from
        result.update(trainer.state.metrics)
        if run.rank == 0:
            print("best checkpoint:", saved.best_checkpoint)


@exits_on_error
def main(argv=None) -> dict:
    cfg = parse_args(argv, **DEFAULTS)
    verification.check_target_options(cfg)  # --val_targets, --best_by: fail before anything is built
    result: dict = {}
    with parallel(cfg) as launcher:  # one process, torchrun/srun's, or --nproc_per_node spawned
        launcher.run(training, cfg, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
