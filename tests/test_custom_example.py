"""The README's complete example, run as a user runs it: train, then resume in the same folder."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conftest import copy_subset
from faceignite.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def run_example(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's faceignite and handlers
    return subprocess.run([sys.executable, "experiments/custom_example.py", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_custom_example_trains_then_resumes_in_its_folder(tmp_path, synthetic_root):
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path / "data", identities=4, images=3)  # 2 iterations/epoch
    args = ["--dataroot", str(root), "--output_dir", str(tmp_path / "runs"), "--model", "tiny",
            "--image_size", "32", "--batch_size", "4", "--valid_split", "0.34",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu", "--n_saved", "5",
            "--tensorboard", str(tmp_path / "tb"), "--warmup_epochs", "0"]  # same schedule shape
    first = run_example(*args, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = next((tmp_path / "runs").glob("custom_example-*"))
    before = {p.name: digest(p) for p in run_dir.glob("*.pt")}
    assert "training_checkpoint_2.pt" in before, before
    first_ckpt = load_checkpoint(str(run_dir / "training_checkpoint_2.pt"))
    assert "val_accuracy" in first_ckpt["metrics"]  # held-out validation ran at iteration 2
    assert list((tmp_path / "tb").glob("custom_example-*/events.out.tfevents.*"))

    second = run_example(*args, "--epochs", "2", "--resume_path", str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").glob("custom_example-*")] == [run_dir.name]
    after = {p.name: digest(p) for p in run_dir.glob("*.pt")}
    assert "training_checkpoint_4.pt" in after
    # continued from iteration 2 for one epoch: epoch 2 ends at iteration 4, no epoch-3 file
    last = load_checkpoint(str(run_dir))
    assert (last["epoch"], last["trainer_state_dict"]["iteration"]) == (2, 4)
    assert sorted(n for n in after if n.startswith("training_checkpoint")) == [
        "training_checkpoint_2.pt", "training_checkpoint_4.pt"]
    for name, sha in before.items():
        if name.startswith("training_checkpoint"):  # earlier checkpoints kept, not replaced
            assert after.get(name) == sha, name


def test_readme_shows_the_complete_example_as_it_is():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = (REPO / "experiments" / "custom_example.py").read_text(encoding="utf-8")
    assert f"```python\n{example}```" in readme
