"""End to end: a real training run of the tiny network on JPEG folders must learn; the README's
hand-composed experiment trains, validates and saves."""
import runpy
import sys
from pathlib import Path

from ignite.engine import Events

from conftest import copy_subset
from faceignite.checkpoint import load_checkpoint
from handlers.training import main

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_learns(train_args):
    losses: list[float] = []

    def record_losses(trainer, state) -> None:  # after the progress handler: the epoch's mean
        trainer.add_event_handler(Events.EPOCH_COMPLETED,
                                  lambda e: losses.append(e.state.metrics["train_loss"]))

    metrics = main(train_args + ["--epochs", "4"], hooks=[record_losses])
    chance = 1 / 24
    assert metrics["val_accuracy"] > 5 * chance, metrics  # 0.79 measured: learns by far
    # falls every epoch, by a third at least (3.30 -> 1.77 -> 1.00 -> 0.54 measured)
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_custom_experiment_from_the_readme_runs(synthetic_root, small_pairs, tmp_path,
                                                monkeypatch):
    """The README's hand-composed experiment trains, validates on LFW-format pairs and saves
    (the file run as ``__main__`` in this process, tiny network, 48 JPEGs; as a real process
    that also resumes: tests/test_custom_example.py)."""
    root = copy_subset(synthetic_root[0], tmp_path / "data", identities=6, images=8)
    pairs = small_pairs
    monkeypatch.setattr(sys, "argv", [
        "experiments/custom_example.py", "--dataroot", str(root), "--output_dir",
        str(tmp_path / "runs"), "--model", "tiny", "--image_size", "32", "--batch_size", "4",
        "--valid_split", "0.25", "--num_workers", "0", "--clearml", "off", "--device", "cpu",
        "--epochs", "2", "--lfw", str(pairs), "--tensorboard", str(tmp_path / "tb")])
    runpy.run_path(str(REPO / "experiments" / "custom_example.py"), run_name="__main__")
    run_dir = next((tmp_path / "runs").glob("custom_example-*"))
    last = load_checkpoint(str(run_dir))  # the epoch-2 checkpoint carries both validations
    assert last["epoch"] == 2
    assert {"val_accuracy", "lfw_accuracy"} <= set(last["metrics"]), last["metrics"]
    assert list(run_dir.glob("best_checkpoint_*.pt"))
    assert list(run_dir.glob("roc_lfw_epoch002_*.png"))
    assert list((tmp_path / "tb").glob("custom_example-*/events.out.tfevents.*"))
