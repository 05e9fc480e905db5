"""The run control as one object (``handlers.control.RunControl``): its place in the handler
order is its own, a wrong order stops with one line saying what comes first (or works), a NaN
stop is exit code 3, and a signal stops a validation the control was never told about.

Real Ignite engines whose step trains nothing (the handlers are the subject), the real
checkpoint and held-out handlers, real files in tmp_path and real signals."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from handlers import checkpoint, events, holdout, interrupt
from handlers.control import RunControl

EPOCH = 3  # iterations an epoch


def idle_trainer(nan_from: int | None = None) -> Engine:
    """A real trainer whose loss is 1, or NaN from iteration ``nan_from`` on."""
    def step(engine: Engine, _batch) -> dict:
        bad = nan_from is not None and engine.state.iteration >= nan_from
        return {"loss": torch.tensor(float("nan") if bad else 1.0)}
    return Engine(step)


def saved_iterations(folder) -> list[int]:
    return sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("training_*.pt"))


def attach_checkpoints(trainer: Engine, folder) -> checkpoint.Checkpointer:
    return checkpoint.attach(trainer, {"model": nn.Linear(2, 2)}, str(folder), n_saved=10)


def test_checkpoints_inside_the_block_follow_the_nan_check_and_nan_is_exit_3(tmp_path):
    trainer = idle_trainer(nan_from=5)
    with RunControl(trainer, every=(50,)) as control:
        control.save_with(attach_checkpoints(trainer, tmp_path))
    with pytest.raises(SystemExit) as stopped:
        control.run([0] * EPOCH, max_epochs=4)
    assert stopped.value.code == 3  # the control's, not the caller's
    assert trainer.state.iteration == 2 * EPOCH  # NaN at 5, read at the epoch end (6)
    assert saved_iterations(tmp_path) == [EPOCH]  # nothing of the poisoned weights


def test_a_checkpoint_attached_before_the_control_is_refused_with_one_line(tmp_path):
    trainer = idle_trainer()
    saver = attach_checkpoints(trainer, tmp_path)  # wrong: before the control's first handlers
    with RunControl(trainer, every=(50,)) as control:
        control.save_with(saver)
    with pytest.raises(FaceIgniteError, match="^attach the run control first") as refused:
        control.run([0] * EPOCH, max_epochs=2)
    assert "\n" not in str(refused.value)
    assert trainer.state.iteration == EPOCH  # at its first save, not after the run


def test_save_with_or_run_out_of_place_is_refused_with_one_line(tmp_path):
    trainer = idle_trainer()
    control = RunControl(trainer)
    saver = attach_checkpoints(trainer, tmp_path)
    with pytest.raises(FaceIgniteError, match="^attach the run control first"):
        control.save_with(saver)  # before the block
    with pytest.raises(FaceIgniteError, match="^attach the run control first"):
        control.run([0] * EPOCH, max_epochs=1)  # never attached
    with control:
        pass
    with pytest.raises(FaceIgniteError, match="^attach the run control first"):
        control.save_with(saver)  # after the block


def holdout_loader(batches: int) -> list:
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return [(images, torch.tensor([0, 1, 0, 1]), 0)] * batches


def test_validations_and_handlers_before_or_after_the_block_work():
    """Only checkpoints need the control first: a validation attached before it, and a handler
    attached after it, run as they would inside."""
    trainer = idle_trainer()
    evaluator = holdout.attach(trainer, build_model("tiny", 16), SoftmaxCenterLoss(2, 16),
                               holdout_loader(1), "cpu", every_iterations=2)
    seen: list[int] = []
    trainer.add_event_handler(events.ValidationEvents.HOLDOUT_COMPLETED,
                              lambda e: seen.append(e.state.iteration))
    with RunControl(trainer, every=(2,)) as control:
        pass
    after: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: after.append(e.state.iteration))
    metrics = control.run([0] * EPOCH, max_epochs=2)
    assert seen == [2, 3, 4, 6] and after == [3, 6]
    assert "val_accuracy" in metrics and evaluator.state.iteration == 1


def test_a_signal_stops_a_validation_the_control_was_not_told_about(tmp_path):
    """The held-out handler registers its evaluator on the trainer; the control guards it: a
    SIGTERM during the validation stops it at its next batch, the trainer saves, exit 75."""
    trainer = idle_trainer()
    with RunControl(trainer, every=(50,), signals=interrupt.COMMAND_LINE_SIGNALS) as control:
        evaluator = holdout.attach(trainer, build_model("tiny", 16), SoftmaxCenterLoss(2, 16),
                                   holdout_loader(5), "cpu")
        evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=2),
                                    lambda _: os.kill(os.getpid(), signal.SIGTERM))
        saver = control.save_with(attach_checkpoints(trainer, tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(interrupt.TrainingInterrupted) as stopped:
        control.run([0] * EPOCH, max_epochs=2)
    assert stopped.value.exit_code == 75
    assert evaluator.state.iteration == 2  # of 5 batches: stopped at the next one's check
    assert stopped.value.checkpoint == saver.last_checkpoint
    assert saved_iterations(tmp_path) == [EPOCH]
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler removed
