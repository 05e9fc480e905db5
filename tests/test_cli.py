"""The command line: every original option, and one-line errors for bad input."""
import runpy
import sys

import pytest

import zygote
from conftest import REPO

ORIGINAL_OPTIONS = ["--dataroot", "-d", "--lfw", "--lfw_batch_size", "--lfw_validation_epoch_interval",
                    "--model", "--epochs", "--resume_path", "--batch_size", "--num_workers",
                    "--valid_split", "--embedding_dim", "--pretrained", "--lr", "--center_loss_lr",
                    "--center_loss_weight"]
OUR_OPTIONS = ["--seed", "--device", "--optimizer", "--output_dir", "--image_size"]


def _run(*args, timeout=120):
    return zygote.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                      timeout=timeout)


def assert_full_help(script: str, text: str) -> None:
    for option in ORIGINAL_OPTIONS + OUR_OPTIONS:
        assert f" {option}" in text, f"{script}: {option} missing from -h"
    # --model offers every registered network, the test-size one included
    assert "resnet34" in text and "resnet101" in text and "tiny" in text


def test_help_lists_every_original_option():
    out = _run("experiments/resnet34_center.py", "-h")  # a real process, as a user runs it
    assert out.returncode == 0, out.stderr
    assert_full_help("resnet34_center", out.stdout)


@pytest.mark.parametrize("script", ["resnet50_center", "resnet101_center"])
def test_help_of_the_other_recipes_lists_every_original_option(script, monkeypatch, capsys):
    """The same -h, run as ``__main__`` in this process (no second import of torch)."""
    monkeypatch.setattr(sys, "argv", [f"experiments/{script}.py", "-h"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "experiments" / f"{script}.py"), run_name="__main__")
    assert exc.value.code == 0
    assert_full_help(script, capsys.readouterr().out)


def test_missing_dataroot_is_one_clear_line(tmp_path):
    missing = tmp_path / "no_such_vggface2"
    out = _run("experiments/resnet34_center.py", "--dataroot", str(missing), "--output_dir",
               str(tmp_path / "runs"), "--clearml", "off")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"dataset folder not found: {missing}" in errors[0]
    assert "Traceback" not in out.stderr
