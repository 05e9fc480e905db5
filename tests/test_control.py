"""Long runs: iteration-interval validation, --max_time, early stopping, NaN guard."""
import re

import pytest

import torch
from ignite.engine import Engine, Events

from conftest import nan_loss_from
from faceignite.checkpoint import load_checkpoint
from handlers import control, events

from handlers.standard import main

ITERS_PER_EPOCH = 18  # 576 training images of the synthetic set / batch 32


def _run_log(tmp_path) -> str:
    return next((tmp_path / "runs").glob("resnet34_center-*/run.log")).read_text()


def test_val_interval_validates_at_the_right_iterations(train_args, tmp_path):
    main(train_args + ["--epochs", "1", "--val_interval", "5"])
    iterations = [int(i) for i in re.findall(r"held-out  epoch 1 iteration (\d+)", _run_log(tmp_path))]
    assert iterations == [5, 10, 15, ITERS_PER_EPOCH]


def test_epoch_end_on_a_val_interval_step_validates_once(train_args, tmp_path):
    main(train_args + ["--epochs", "1", "--val_interval", "6"])
    iterations = [int(i) for i in re.findall(r"held-out  epoch 1 iteration (\d+)", _run_log(tmp_path))]
    assert iterations == [6, 12, ITERS_PER_EPOCH]


def test_max_time_stops_cleanly_with_a_loadable_checkpoint(train_args, tmp_path):
    metrics = main(train_args + ["--epochs", "40", "--max_time", "4"])
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    ckpt = load_checkpoint(str(run_dir))  # the newest training checkpoint of the run
    assert ckpt["iteration"] < 40 * ITERS_PER_EPOCH  # stopped long before the last epoch
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())
    assert "val_accuracy" in metrics  # the final validation ran


def test_early_stopping_after_patience_validations_without_gain():
    scores = iter([0.50, 0.60, 0.60, 0.55, 0.90, 0.95])
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})
    events.register(trainer)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        engine.state.metrics["val_accuracy"] = next(scores)
        engine.fire_event(events.ValidationEvents.HOLDOUT_COMPLETED)

    control.attach(trainer, early_stopping=2, score_name="val_accuracy")
    trainer.run([0] * 3, max_epochs=6)
    assert trainer.state.epoch == 4  # best 0.60 at epoch 2, then 0.60 and 0.55: two without gain


def test_nan_loss_stops_with_message_and_no_corrupt_checkpoint(train_args, tmp_path, caplog):
    factory = nan_loss_from(25)  # the real criterion, NaN from its 25th call on (epoch 2)
    with pytest.raises(SystemExit) as exc:  # a NaN stop is no success: exit code 3
        main(train_args + ["--epochs", "3"], criterion_factory=factory)
    assert exc.value.code == 3
    log = _run_log(tmp_path)
    line = next(line for line in log.splitlines() if "loss went NaN" in line)
    # went NaN at iteration 25; read at the next agreement point (log interval 50: the end of
    # epoch 2), before that epoch's checkpoint
    assert "ce=nan" in line and "loss=nan" in line
    assert f"iteration {2 * ITERS_PER_EPOCH} (after iteration {ITERS_PER_EPOCH}" in line
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    saved = sorted(p.name for p in run_dir.glob("training_checkpoint_*.pt"))
    assert saved == [f"training_checkpoint_{ITERS_PER_EPOCH}.pt"]
    assert f"resume from {run_dir / saved[0]}" in line
    ckpt = load_checkpoint(str(run_dir / saved[0]))
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())
