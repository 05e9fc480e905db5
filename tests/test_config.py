"""The options table: ranges refused in one line (exit 2), defaults stated once, help made from it."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

import zygote
from faceignite.config import BY_NAME, defaults_table, get_args_parser, parse_args
from faceignite.errors import FaceIgniteError
from faceignite.losses import ArcFace, CosFace, TripletLoss
from faceignite.losses.factory import LOSS_DEFAULTS
from handlers.training import main

REPO = Path(__file__).resolve().parents[1]
OUT_OF_RANGE = [
    ("--valid_split", "1"), ("--valid_split", "-0.1"), ("--image_size", "0"),
    ("--batch_size", "1"), ("--lr", "0"), ("--lr", "-0.1"), ("--embedding_dim", "0"),
    ("--n_saved", "0"), ("--num_workers", "-1"), ("--lfw_batch_size", "0"),
    ("--log_interval", "-1"), ("--val_interval", "-5"), ("--save_interval", "-1"),
    ("--warmup_epochs", "-1"), ("--lfw_validation_epoch_interval", "-1"),
    ("--lr_milestones", "-1"),
]


@pytest.mark.parametrize("option,value", OUT_OF_RANGE)
def test_an_option_out_of_range_is_one_line_naming_it_and_exit_2(option, value, tmp_path, caplog):
    argv = ["--output_dir", str(tmp_path), option, value]
    with pytest.raises(FaceIgniteError, match=f"^{re.escape(option)} "):
        parse_args(argv)
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--clearml", "off", "--device", "cpu"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert exit_.value.code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {option} ")
    assert "\n" not in errors[0]
    assert not any(tmp_path.iterdir())  # refused before any run folder is made


def test_the_edges_of_each_range_are_accepted(tmp_path):
    cfg = parse_args(["--valid_split", "0", "--batch_size", "2", "--num_workers", "0",
                      "--n_saved", "1", "--warmup_epochs", "0", "--lfw_batch_size", "1"])
    assert (cfg.valid_split, cfg.batch_size, cfg.n_saved) == (0.0, 2, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path):
    proc = zygote.run([sys.executable, "experiments/resnet34_center.py", "--device", "cuda",
                      "--output_dir", str(tmp_path), "--clearml", "off"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--device cuda: no CUDA GPU" in lines[0]
    assert not any(tmp_path.iterdir())


def test_data_dependent_defaults_come_from_the_table():
    builtin, real = parse_args([]), parse_args(["--dataroot", "/data"])
    for name in ("epochs", "batch_size", "image_size", "valid_split"):
        option = BY_NAME[name]
        assert (getattr(real, name), getattr(builtin, name)) == (option.default, option.builtin)
    assert parse_args(["--dataroot", "/data"], valid_split=0.0).valid_split == 0.0  # a recipe's


def test_help_states_the_defaults_of_the_table_and_of_the_recipe():
    text = get_args_parser(**LOSS_DEFAULTS["arcface"]).format_help()
    assert "(default: 0.003)" in re.sub(r"\s+", " ", text.split("\n  --lr LR", 1)[1])[:80]
    margin = re.sub(r"\s+", " ", text.split("\n  --margin MARGIN", 1)[1])[:60]
    assert f"(default: {ArcFace.default_margin})" in margin  # the recipe's loss's own margin
    text = get_args_parser().format_help()  # no recipe: every loss's margin
    margin = re.sub(r"\s+", " ", text.split("\n  --margin MARGIN", 1)[1])[:200]
    for cls in (TripletLoss, ArcFace, CosFace):  # each loss's margin, stated in its class
        assert str(cls.default_margin) in margin
    assert TripletLoss().margin == TripletLoss.default_margin
    assert TripletLoss().mining == BY_NAME["triplet_mining"].default  # one default, not two


def test_readme_defaults_table_is_the_generated_one():
    assert defaults_table() in (REPO / "README.md").read_text(encoding="utf-8")


def test_layers_library_imports_no_handlers_and_no_sys_path_inserts():
    for path in (REPO / "faceignite").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) (handlers|experiments)\b", text, re.M), path
    for folder in ("faceignite", "handlers", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            assert "sys.path" + ".insert" not in path.read_text(encoding="utf-8"), path
    for path in (REPO / "experiments").glob("*.py"):  # recipes: none imports another
        text = path.read_text(encoding="utf-8")
        others = [p.stem for p in (REPO / "experiments").glob("*.py") if p != path]
        assert not re.search(rf"^\s*(from|import) ({'|'.join(others)})\b", text, re.M), path
