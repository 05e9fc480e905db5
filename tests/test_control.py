"""When things fire: iteration-interval validation, --max_time, early stopping, the NaN guard.

The schedules are tested on minimal Ignite engines (an idle trainer, the real handlers); the
standard run's wiring of the same options on the tiny network (``--model tiny``, 32 px) on 48
real JPEGs, observed through the trainer's events, checkpoints and exit codes."""
import time

import pytest
import torch
from ignite.engine import Engine, Events

from conftest import copy_subset, nan_loss_from
from faceignite.checkpoint import load_checkpoint
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from handlers import control, events, holdout

from handlers.training import main

ITERS_PER_EPOCH = 18  # 6 identities x 8 JPEGs, 2 of each held out: 36 training images / batch 2


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, synthetic_root):
    return copy_subset(synthetic_root[0], tmp_path_factory.mktemp("control"), identities=6,
                       images=8)


@pytest.fixture
def run_args(small_root, tmp_path):
    return ["--dataroot", str(small_root), "--output_dir", str(tmp_path / "runs"), "--model",
            "tiny", "--image_size", "32", "--batch_size", "2", "--valid_split", "0.25",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu"]


def idle_trainer() -> Engine:
    """A real trainer whose step trains nothing (the handlers are what is tested)."""
    return Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})


def record(event, seen: list):
    """A standard-run hook: the trainer's (epoch, iteration) each time ``event`` fires."""
    def hook(trainer, state) -> None:
        trainer.add_event_handler(event, lambda e: seen.append((e.state.epoch,
                                                                e.state.iteration)))
    return hook


def attach_holdout(trainer: Engine, every_iterations: int) -> list:
    """The real held-out handler (tiny network, 4 random images of 2 classes) on ``trainer``;
    returns the (epoch, iteration) of each ``HOLDOUT_COMPLETED``."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = [(images, torch.tensor([0, 1, 0, 1]), 0)]
    holdout.attach(trainer, build_model("tiny", 16), SoftmaxCenterLoss(2, 16), loader, "cpu",
                   every_iterations=every_iterations)
    seen: list = []
    trainer.add_event_handler(events.ValidationEvents.HOLDOUT_COMPLETED,
                              lambda e: seen.append((e.state.epoch, e.state.iteration)))
    return seen


@pytest.mark.parametrize("every,expected", [
    (5, [5, 10, 15, 18, 20, 25, 30, 35, 36]),  # and each epoch end
    (6, [6, 12, 18, 24, 30, 36]),               # an epoch end on an interval step: once
    (0, [18, 36])])                             # epoch ends only
def test_holdout_validates_every_n_iterations_and_at_each_epoch_end(every, expected):
    trainer = idle_trainer()
    seen = attach_holdout(trainer, every)
    trainer.run([0] * ITERS_PER_EPOCH, max_epochs=2)
    assert [i for _, i in seen] == expected
    assert 0 <= trainer.state.metrics["val_accuracy"] <= 1 and "val_loss" in trainer.state.metrics


def test_a_run_stopped_between_intervals_ends_validated_once():
    trainer = idle_trainer()
    seen = attach_holdout(trainer, 5)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: e.terminate())
    trainer.run([0] * ITERS_PER_EPOCH, max_epochs=2)
    assert [i for _, i in seen] == [5, 7]  # COMPLETED validates the last iteration


def test_val_interval_validates_at_the_right_iterations(run_args):
    seen: list = []
    main(run_args + ["--epochs", "1", "--val_interval", "5"],
         hooks=[record(events.ValidationEvents.HOLDOUT_COMPLETED, seen)])
    assert seen == [(1, 5), (1, 10), (1, 15), (1, ITERS_PER_EPOCH)]


def test_epoch_end_on_a_val_interval_step_validates_once(run_args):
    seen: list = []
    main(run_args + ["--epochs", "1", "--val_interval", "6"],
         hooks=[record(events.ValidationEvents.HOLDOUT_COMPLETED, seen)])
    assert seen == [(1, 6), (1, 12), (1, ITERS_PER_EPOCH)]


def test_max_time_stops_a_minimal_engine_at_the_first_iteration_past_the_limit():
    trainer = idle_trainer()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: time.sleep(0.01))
    with control.RunControl(trainer, max_time=0.2, every=(50,)):
        pass
    completed = []
    trainer.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    trainer.run([0] * 10, max_epochs=1000)
    # each iteration sleeps 10 ms or more: at most 20 fit in 0.2 s, and one process stops at
    # the next iteration past the limit, not at the next agreement point (50)
    assert 1 <= trainer.state.iteration <= 21
    assert completed == [trainer.state.iteration]  # a clean stop: COMPLETED handlers ran


def test_max_time_stops_cleanly_with_a_loadable_checkpoint(run_args, tmp_path):
    metrics = main(run_args + ["--epochs", "1000", "--max_time", "0.5"])
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    ckpt = load_checkpoint(str(run_dir))  # the newest training checkpoint of the run
    assert ckpt["iteration"] < 1000 * ITERS_PER_EPOCH  # stopped long before the last epoch
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

    with control.RunControl(trainer, early_stopping=2, score_name="val_accuracy"):
        pass
    trainer.run([0] * 3, max_epochs=6)
    assert trainer.state.epoch == 4  # best 0.60 at epoch 2, then 0.60 and 0.55: two without gain


def test_nan_loss_stops_with_message_and_no_corrupt_checkpoint(run_args, tmp_path, caplog):
    factory = nan_loss_from(25)  # the real criterion, NaN from its 25th call on (epoch 2)
    nan_at: list = []
    with pytest.raises(SystemExit) as exc:  # a NaN stop is no success: exit code 3
        main(run_args + ["--epochs", "3"], criterion_factory=factory,
             hooks=[record(events.TrainerEvents.NAN_DETECTED, nan_at)])
    assert exc.value.code == 3
    # went NaN at iteration 25; read at the next agreement point (log interval 50: the end of
    # epoch 2), before that epoch's checkpoint
    assert nan_at == [(2, 2 * ITERS_PER_EPOCH)]
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    saved = sorted(p.name for p in run_dir.glob("training_checkpoint_*.pt"))
    assert saved == [f"training_checkpoint_{ITERS_PER_EPOCH}.pt"]
    # the message is the feature: which terms went NaN, where, and which file to resume from
    line = next(line for line in (run_dir / "run.log").read_text().splitlines()
                if "loss went NaN" in line)
    assert "ce=nan" in line and "loss=nan" in line
    assert f"iteration {2 * ITERS_PER_EPOCH} (after iteration {ITERS_PER_EPOCH}" in line
    assert f"resume from {run_dir / saved[0]}" in line
    ckpt = load_checkpoint(str(run_dir / saved[0]))
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())
