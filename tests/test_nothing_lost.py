"""Issue 30 items 1-4 and 12: no work lost, no data leaked. Real files (a packed .rec, .bin
sets written by pickle, JPEG folders), real runs of the tiny model, real second processes."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest

from conftest import copy_subset, one_error, shared_path
from faceignite.data.pack import main as pack_main
from handlers.standard import main

PYTHON = os.environ.get("PYTHON", None)


def faces(dest: Path, identities: int = 4, images: int = 3) -> Path:
    return copy_subset(shared_path("celeba_subset", "aligned-160"), dest, identities, images)


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32", "--batch_size", "4", "--epochs", "1", "--valid_split", "0",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu", "--log_interval", "0",
            *extra]


def refused(argv: list[str], caplog) -> str:
    """Run ``main(argv)``: it must exit 2 with one error line, which is returned."""
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return one_error(caplog)


def checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("*/training_checkpoint_*.pt")) if out.exists() else []


# ------------------------------------------------ item 1: .idx offsets checked when read
def packed(tmp_path: Path) -> Path:
    dst = tmp_path / "packed"
    assert pack_main([str(faces(tmp_path / "src")), str(dst), "--no_progress"]) == 0
    return dst


def set_offset(idx: Path, key: int, offset: int) -> None:
    lines = idx.read_text().splitlines()
    lines = [f"{key}\t{offset}" if line.split()[0] == str(key) else line for line in lines]
    idx.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("offset", [-64, 10**9])
def test_an_idx_offset_outside_the_rec_is_one_line_before_training(tmp_path, caplog, offset):
    dst = packed(tmp_path)
    set_offset(dst / "train.idx", 5, offset)
    out = tmp_path / "runs"
    line = refused(args(dst, out), caplog)
    assert f"{dst / 'train.rec'} key 5" in line and f"offset {offset}" in line
    assert not checkpoints(out) and not any(out.glob("*/run.log"))  # refused before training


# ------------------------------------------------ item 2: verification targets checked first
def bin_set(path: Path, root: Path, bad_image: int | None = None, issame=None) -> Path:
    """A 20-pair .bin of real JPEG bytes (pairs of 8 images), written as insightface does."""
    files = sorted(root.rglob("*.jpg"))[:8]
    images = [f.read_bytes() for f in files]
    pairs = [(i % 8, (i * 3 + 1) % 8) for i in range(20)]
    data = [images[i] for pair in pairs for i in pair]
    if bad_image is not None:
        data[bad_image] = b"not a picture"
    labels = issame if issame is not None else [i % 2 == 0 for i in range(20)]
    path.write_bytes(pickle.dumps((data, labels), protocol=2))
    return path


def test_an_undecodable_bin_image_is_one_line_naming_target_and_pair(tmp_path, caplog):
    root = faces(tmp_path / "data")
    target = bin_set(tmp_path / "cfp.bin", root, bad_image=7)  # image 7: pair 4's right
    out = tmp_path / "runs"
    line = refused(args(root, out, "--val_targets", str(target)), caplog)
    assert "cfp" in line and "pair 4" in line and "--lfw_skip_missing" in line
    assert not checkpoints(out) and not any(out.glob("*/run.log"))  # before any training


def test_lfw_skip_missing_drops_such_pairs_before_training(tmp_path, caplog):
    root = faces(tmp_path / "data")
    target = bin_set(tmp_path / "cfp.bin", root, bad_image=7)
    out = tmp_path / "runs"
    with caplog.at_level(logging.INFO):
        metrics = main(args(root, out, "--val_targets", str(target), "--lfw_skip_missing"))
    assert "cfp_accuracy" in metrics and len(checkpoints(out)) == 1
    dropped = [r.getMessage() for r in caplog.records if "dropped before training" in
               r.getMessage()]
    assert len(dropped) == 1 and "1 of 20 pairs" in dropped[0]


@pytest.mark.parametrize("issame", [["True", "False"] * 10, [2] * 20, [0.5] * 20])
def test_issame_other_than_booleans_or_0_1_is_refused(tmp_path, caplog, issame):
    root = faces(tmp_path / "data")
    target = bin_set(tmp_path / "bad.bin", root, issame=issame)
    out = tmp_path / "runs"
    line = refused(args(root, out, "--val_targets", str(target)), caplog)
    assert str(target) in line and "issame of pair 0" in line and repr(issame[0]) in line
    assert not checkpoints(out)


def test_issame_as_0_1_integers_is_accepted(tmp_path):
    from faceignite.lfw.bin_set import load_bin

    root = faces(tmp_path / "data")
    target = bin_set(tmp_path / "ok.bin", root, issame=[1, 0] * 10)
    assert load_bin(str(target)).issame.tolist() == [True, False] * 10
