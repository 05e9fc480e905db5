"""Exact resume: 2 epochs == 1 epoch + resume 1; SIGTERM mid-epoch, then resume, == uninterrupted.

Real CPU runs of the resnet34 recipe at 32 px on a few real JPEG files (2 iterations per epoch).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch

import zygote
from conftest import REPO, copy_subset

from faceignite.cli import EXIT_PREEMPTED
from handlers.training import main

EPOCHS, EPOCH_LENGTH = 2, 2


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, synthetic_root):
    """4 identities x 3 real JPEGs: 2 train + 1 held out each, batch 4 → 2 iterations/epoch."""
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path_factory.mktemp("small"), identities=4, images=3)
    return root


def run_args(root, output_dir):
    return ["--dataroot", str(root), "--output_dir", str(output_dir), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "4", "--epochs", str(EPOCHS), "--valid_split", "0.34",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu", "--n_saved", "3"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, small_root):
    """An uninterrupted 2-epoch run: its metrics and run folder."""
    out = tmp_path_factory.mktemp("baseline")
    metrics = main(run_args(small_root, out))
    run_dir = next(out.glob("resnet34_center-*"))
    yield metrics, run_dir
    shutil.rmtree(out, ignore_errors=True)  # ~170 MB per checkpoint


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a, b):
    for key in ("model_state_dict", "criterion_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            x, y = a[key][name], b[key][name]
            assert torch.allclose(x.double(), y.double(), rtol=1e-6, atol=1e-7), (key, name)
    for key in ("optimizer_model_state_dict", "optimizer_centerloss_state_dict"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for name, x in sa[i].items():
                if isinstance(x, torch.Tensor):
                    assert torch.allclose(x.double(), sb[i][name].double(), rtol=1e-6, atol=1e-7)
    assert a["learning_rate_scheduler_state_dict"] == b["learning_rate_scheduler_state_dict"]
    assert a["trainer_state_dict"] == b["trainer_state_dict"]
    assert torch.equal(a["rng_state"]["torch"], b["rng_state"]["torch"])


def test_two_epochs_equal_one_epoch_resumed_for_one_more(baseline, small_root, tmp_path):
    metrics, run_dir = baseline
    final = EPOCHS * EPOCH_LENGTH
    assert sorted(p.name for p in run_dir.glob("training_checkpoint_*.pt")) == [
        f"training_checkpoint_{EPOCH_LENGTH}.pt", f"training_checkpoint_{final}.pt"]
    assert len(list(run_dir.glob("best_checkpoint_*_val_accuracy=*.pt"))) == 1
    # the epoch-1 checkpoint of that run, resumed elsewhere for the second epoch
    first = tmp_path / "resumed" / f"training_checkpoint_{EPOCH_LENGTH}.pt"
    first.parent.mkdir()
    shutil.copy(run_dir / first.name, first)
    assert load(first)["epoch"] == 1
    resumed = main(run_args(small_root, tmp_path / "unused") + ["--resume_path", str(first)])

    assert_same_training_state(load(run_dir / f"training_checkpoint_{final}.pt"),
                               load(first.parent / f"training_checkpoint_{final}.pt"))
    for name in ("val_accuracy", "val_loss", "train_loss", "train_ce", "train_center",
                 "train_accuracy", "lr_model"):
        assert resumed[name] == pytest.approx(metrics[name], rel=1e-5), name
    assert "Ctrl-C or SIGTERM" in (first.parent / "run.log").read_text()
    shutil.rmtree(first.parent)  # ~170 MB per checkpoint


def test_sigterm_mid_epoch_saves_and_resume_continues_exactly(baseline, small_root, tmp_path):
    out = tmp_path / "interrupted"
    proc = zygote.Popen([sys.executable, "experiments/resnet34_center.py",
                         *run_args(small_root, out)], cwd=REPO, stderr=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in proc.stderr:  # the run announces its signal handling as training starts
            lines.append(line)
            if "saves a checkpoint after the current iteration" in line:
                proc.send_signal(signal.SIGTERM)
                break
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr))
        reader.start()
        code = proc.wait(timeout=300)
        reader.join()
    finally:
        proc.kill()
    log = "".join(lines)
    assert code == EXIT_PREEMPTED, log  # pre-empted: continue with the same command
    match = re.search(r"interrupted by SIGTERM at epoch \d+ iteration (\d+): checkpoint saved to "
                      r"(\S+\.pt); resume with --resume_path \2", log)
    assert match, log
    assert "Traceback" not in log
    iteration, saved = int(match.group(1)), match.group(2)
    ckpt = load(saved)
    assert ckpt["trainer_state_dict"]["iteration"] == iteration < EPOCHS * EPOCH_LENGTH
    # resume from it: same final state as the uninterrupted run
    main(run_args(small_root, out) + ["--resume_path", saved])
    final = f"training_checkpoint_{EPOCHS * EPOCH_LENGTH}.pt"
    assert_same_training_state(load(baseline[1] / final), load(os.path.join(
        os.path.dirname(saved), final)))
    resumed_log = (out / os.path.basename(os.path.dirname(saved)) / "run.log").read_text()
    assert f"iteration {iteration})" in resumed_log  # "resuming from ... (epoch E iteration I)"
    shutil.rmtree(out)


def test_a_finished_run_extends_by_more_epochs(baseline, small_root, tmp_path, caplog):
    metrics, run_dir = baseline
    final = EPOCHS * EPOCH_LENGTH
    done = tmp_path / "extended" / f"training_checkpoint_{final}.pt"
    done.parent.mkdir()
    shutil.copy(run_dir / done.name, done)
    args = run_args(small_root, tmp_path / "unused")
    with pytest.raises(SystemExit):  # nothing left to train: says which --epochs to pass
        main(args + ["--resume_path", str(done)])
    assert f"pass --epochs above {EPOCHS} to go on" in caplog.text
    more = args[:args.index("--epochs")] + ["--epochs", str(EPOCHS + 1)] + args[
        args.index("--epochs") + 2:]
    extended = main(more + ["--resume_path", str(done)])
    after = load(done.parent / f"training_checkpoint_{final + EPOCH_LENGTH}.pt")
    assert after["epoch"] == EPOCHS + 1
    assert after["trainer_state_dict"]["iteration"] == final + EPOCH_LENGTH
    # the schedule goes on as built for the first run: its last LR, not a new warm-up
    assert extended["lr_model"] == pytest.approx(metrics["lr_model"])
    assert f"goes on as built for {EPOCHS} epochs" in caplog.text
    shutil.rmtree(done.parent)
