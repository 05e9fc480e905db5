"""End to end: a real tiny training run on JPEG folders must learn."""
import os
import re
import subprocess
import sys
from pathlib import Path


from handlers.standard import main

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_learns(train_args, tmp_path):
    metrics = main(train_args + ["--epochs", "4"])
    chance = 1 / 24
    assert metrics["val_accuracy"] > 5 * chance, metrics
    log = next((tmp_path / "runs").glob("resnet34_center-*/run.log")).read_text()
    losses = [float(x) for x in re.findall(r"epoch \d+/4 \| loss ([0-9.]+)", log)]
    # falls every epoch, by a third at least (3.53 -> 2.25 at the default λ 0.003)
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses


def test_custom_experiment_from_the_readme_runs(train_args, synthetic_root, tmp_path):
    """The README's hand-composed experiment trains, validates on LFW-format pairs and saves
    (run as a user runs it: the file, this checkout's library)."""
    _, pairs = synthetic_root
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "experiments/custom_example.py", *train_args,
                           "--epochs", "2", "--lfw", str(pairs), "--tensorboard",
                           str(tmp_path / "tb")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "runs").glob("custom_example-*"))
    log = (run_dir / "run.log").read_text()
    assert "held-out  epoch 2" in log and re.search(r"lfw  epoch 2 .*accuracy", log), log[-2000:]
    assert list(run_dir.glob("best_checkpoint_*.pt")) and list(run_dir.glob("roc_lfw_*.png"))
    assert list((tmp_path / "tb").glob("custom_example-*/events.out.tfevents.*"))
