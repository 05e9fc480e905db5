"""The command line: every original option, and one-line errors for bad input."""
import subprocess
import sys

from conftest import REPO

ORIGINAL_OPTIONS = ["--dataroot", "-d", "--lfw", "--lfw_batch_size", "--lfw_validation_epoch_interval",
                    "--model", "--epochs", "--resume_path", "--batch_size", "--num_workers",
                    "--valid_split", "--embedding_dim", "--pretrained", "--lr", "--center_loss_lr",
                    "--center_loss_weight"]
OUR_OPTIONS = ["--seed", "--device", "--optimizer", "--output_dir", "--image_size"]


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_original_option():
    for script in ("resnet34_center", "resnet50_center", "resnet101_center"):
        out = _run(f"experiments/{script}.py", "-h")
        assert out.returncode == 0, out.stderr
        for option in ORIGINAL_OPTIONS + OUR_OPTIONS:
            assert f" {option}" in out.stdout, f"{script}: {option} missing from -h"
        assert "resnet34" in out.stdout and "resnet101" in out.stdout


def test_missing_dataroot_is_one_clear_line(tmp_path):
    missing = tmp_path / "no_such_vggface2"
    out = _run("experiments/resnet34_center.py", "--dataroot", str(missing), "--output_dir",
               str(tmp_path / "runs"), "--clearml", "off")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"dataset folder not found: {missing}" in errors[0]
    assert "Traceback" not in out.stderr
