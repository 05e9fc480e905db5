"""A new experiment composed from the library and the handlers: copy it, change a line.

    python experiments/custom_example.py                         # built-in data, a few minutes on CPU
    python experiments/custom_example.py --dataroot DIR --lfw LFW_DIR --epochs 20
    python experiments/custom_example.py --resume_path runs/custom_example-.../   # continue it
    python experiments/custom_example.py --nproc_per_node 2 --backend gloo        # 2 processes

Every option of ``-h`` is honoured (this file's own choices are only defaults: cosine schedule,
4 epochs, a validation every 10 iterations): resume, Ctrl-C/SIGTERM checkpoints, several
processes, ClearML/TensorBoard, ``--val_targets``, ``--best_by``, ``--partial_fc``.  Each step
is one call with the options it needs (``handlers/from_options.py``); the standard run,
``handlers/training.py``, is the same composition.
"""
import sys

from faceignite.checkpoint import TrainingState
from faceignite.cli import exits_on_error
from faceignite.config import parse_args, plain_config
from faceignite.losses.factory import center_loss
from handlers import from_options, progress

NAME = "custom_example"
DEFAULTS = dict(epochs=4, lr_scheduler="cosine", val_interval=10)  # this experiment's own


def training(local_rank: int, cfg, result: dict) -> None:
    """One process of the run (every process runs all of it; rank 0 writes the files)."""
    with from_options.session(cfg, NAME) as run:  # nothing written before commit()
        resume = from_options.resume(cfg)  # --resume_path / --finetune; keeps the held-out split
        data = from_options.data(cfg, run, resume)  # this process's share of the images
        runtime = from_options.runtime(cfg, run)  # device, --amp, --channels_last, --compile
        model = from_options.model(cfg, runtime)
        criterion = from_options.criterion(cfg, runtime, center_loss, data)  # --partial_fc
        optimizers = from_options.optimizers(cfg, model, criterion)
        trainer, scaler = from_options.trainer(cfg, runtime, model, criterion, optimizers)
        plan = from_options.validations(cfg, data)  # --lfw, --val_targets, --best_by

        # the handlers, in order; the run control (NaN guard, --max_time, --early_stopping,
        # Ctrl-C/SIGTERM, several processes agreeing) takes its first and last places itself
        with from_options.control(trainer, cfg, plan) as control:
            scheduler = from_options.schedule(trainer, cfg, optimizers, data)
            from_options.holdout(trainer, cfg, runtime, model, criterion, data)
            from_options.verification(trainer, cfg, run, runtime, model, plan)
            progress.attach(trainer, optimizers, log_interval=cfg.log_interval)
            state = TrainingState(trainer, model, criterion, optimizers, scheduler, data,
                                  plain_config(cfg), scaler=scaler)  # what a checkpoint holds
            control.save_with(from_options.checkpoints(trainer, cfg, run, state, plan))
            control.close_at_end(
                from_options.clearml(trainer, cfg, run, NAME, optimizers, control.best_checkpoint),
                from_options.tensorboard(trainer, cfg, run, optimizers))

        resume.restore(state)
        from_options.commit(run, cfg)  # the checks passed: config.json and run.log written
        result.update(control.run(data.train_loader, cfg.epochs))  # a NaN stop: exit code 3


@exits_on_error
def main(argv=None) -> dict:
    return from_options.launch(training, parse_args(argv, **DEFAULTS))


if __name__ == "__main__":
    main(sys.argv[1:])
