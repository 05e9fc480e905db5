"""TensorBoard tracking: the event files, read back with tensorboard's EventAccumulator, hold the
same scalars as ClearML and the ROC image of each LFW validation."""
from __future__ import annotations

import pytest
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_clearml import LFW_VALUES, tiny_trainer

from handlers import tensorboard


def test_event_files_hold_scalars_and_roc(tmp_path):
    trainer, optimizers, data, evaluators = tiny_trainer(tmp_path)
    log_dir = tmp_path / "tb" / "run1"
    tensorboard.attach(trainer, str(log_dir), log_interval=3, optimizers=optimizers,
                       hparams={"lr": 0.1, "model": "resnet34", "api_secret_key": "nope"},
                       evaluators=evaluators)
    trainer.run(data, max_epochs=2)

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()

    def steps(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    assert set(steps("train/loss")) == {3, 6}
    assert {"train/ce", "train/center", "train/accuracy"} <= set(tags["scalars"])
    assert steps("lr/lr_model")[3] == pytest.approx(0.1)
    assert steps("lr/lr_centers")[6] == pytest.approx(0.5)
    assert steps("epoch/train_loss")[8] == pytest.approx(trainer.state.metrics["train_loss"])
    assert set(steps("speed/images_per_sec")) == {4, 8}
    assert steps("holdout/val_accuracy")[8] == pytest.approx(trainer.state.metrics["val_accuracy"])
    assert steps("lfw/lfw_accuracy") == {4: pytest.approx(LFW_VALUES["lfw_accuracy"]),
                                         8: pytest.approx(LFW_VALUES["lfw_accuracy"])}
    images = acc.Images("lfw/roc")
    assert [(i.step, i.width, i.height) for i in images] == [(4, 64, 48), (8, 64, 48)]
    assert "hparams/text_summary" in tags["tensors"]
    text = acc.Tensors("hparams/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model": "resnet34"' in text and "api_secret_key" not in text


def test_verification_scalars_come_from_each_target_evaluator(synthetic_root, tmp_path):
    """The real verification handler: each target's evaluator engine is what the tracker
    reads, at the trainer's iteration, under the run's metric names (``lfw/lfw_accuracy``)."""
    from test_verification_handler import PixelProjection, attach_lfw, idle_trainer

    trainer = idle_trainer()
    evaluator = attach_lfw(trainer, PixelProjection(), str(synthetic_root[1]), "cpu", 32,
                           every_epochs=1, batch_size=64, flip=False, distance="l2")
    log_dir = tmp_path / "tb"
    tensorboard.attach(trainer, str(log_dir), log_interval=0, evaluators={"lfw": evaluator.engine})
    seen = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda e: seen.update({e.state.iteration: e.state.metrics["lfw_auc"]}))
    trainer.run([0, 1, 2], max_epochs=2)
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    auc = {e.step: e.value for e in acc.Scalars("lfw/lfw_auc")}
    assert auc == {k: pytest.approx(v) for k, v in seen.items()} and set(auc) == {3, 6}
    assert "lfw/lfw_accuracy" in acc.Tags()["scalars"]
