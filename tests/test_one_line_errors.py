"""Issue 30 items 5-11: bad inputs end with one line naming the option, file or record and exit
code 2, before training where they can be found then; real files made with the project's own
writers (pack, IndexedRecordWriter), real runs of the tiny model."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from conftest import copy_subset, one_error, shared_path
from faceignite.data.pack import main as pack_main
from faceignite.data.recordio import IndexedRecordWriter, pack_payload
from handlers.training import main


def faces(dest: Path, identities: int = 4, images: int = 3) -> Path:
    return copy_subset(shared_path("celeba_subset", "aligned-160"), dest, identities, images)


def args(root: Path | str, out: Path, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32", "--batch_size", "4", "--epochs", "1", "--valid_split", "0",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu", "--log_interval", "0",
            *extra]


def refused(argv: list[str], caplog) -> str:
    """Run ``main(argv)``: it must exit 2 with one error line, which is returned."""
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return one_error(caplog)


def nothing_trained(out: Path) -> bool:
    return not out.exists() or not list(out.glob("*/training_checkpoint_*.pt"))


# ------------------------------------------------ item 5: RecordIO sets
def jpegs(tmp_path: Path, n: int = 6) -> list[bytes]:
    return [p.read_bytes() for p in sorted(faces(tmp_path / "src", 2, 3).rglob("*.jpg"))][:n]


def write_set(folder: Path, header, identities, images: list[bytes], labels) -> Path:
    """An insightface-layout set: record 0 ``header``, images 1..N with ``labels``, then one
    identity record per ``identities`` range, written with the project's RecordIO writer."""
    folder.mkdir(parents=True, exist_ok=True)
    with IndexedRecordWriter(str(folder / "train.rec"), str(folder / "train.idx")) as w:
        w.write(0, pack_payload(header, b""))
        for key, (image, label) in enumerate(zip(images, labels), start=1):
            w.write(key, pack_payload(label, image, id=key))
        for i, rng in enumerate(identities):
            w.write(len(images) + 1 + i, pack_payload(rng, b""))
    return folder


def good_header(n: int, k: int) -> list[int]:
    return [n + 1, n + 1 + k]


def test_a_property_file_with_absurd_sizes_is_refused(tmp_path, caplog):
    dst = tmp_path / "packed"
    assert pack_main([str(faces(tmp_path / "src", 2, 2)), str(dst), "--no_progress"]) == 0
    (dst / "property").write_text("6,100000,100000\n")
    argv = [a for a in args(dst, tmp_path / "runs") if a not in ("--image_size", "32")]
    line = refused(argv, caplog)
    assert str(dst / "property") in line and "6,100000,100000" in line


def test_train_idx_without_train_rec_says_so(tmp_path, caplog):
    dst = tmp_path / "packed"
    assert pack_main([str(faces(tmp_path / "src", 2, 2)), str(dst), "--no_progress"]) == 0
    (dst / "train.rec").unlink()
    line = refused(args(dst, tmp_path / "runs"), caplog)
    assert str(dst) in line and "train.idx but no train.rec" in line


def test_dataroot_naming_the_idx_file_points_to_its_folder(tmp_path, caplog):
    dst = tmp_path / "packed"
    assert pack_main([str(faces(tmp_path / "src", 2, 2)), str(dst), "--no_progress"]) == 0
    line = refused(args(dst / "train.idx", tmp_path / "runs"), caplog)
    assert "--dataroot" in line and str(dst / "train.idx") in line and "its folder" in line


@pytest.mark.parametrize("case", ["overlap", "empty_identity", "header_order", "nan_label"])
def test_damaged_record_layouts_are_refused_naming_the_record(tmp_path, caplog, case):
    images = jpegs(tmp_path)
    n = len(images)
    header, identities, labels = good_header(n, 2), [[1, 4], [4, 7]], [0, 0, 0, 1, 1, 1]
    if case == "overlap":
        identities, want = [[1, 5], [4, 7]], "overlap"
    elif case == "empty_identity":
        identities, want = [[1, 4], [7, 7]], f"key {n + 2}: identity range"
    elif case == "header_order":
        header, want = [n + 3, n + 1], "key 0: header range"
    else:
        labels, want = [float("nan"), 0, 0, 1, 1, 1], "key 1: label nan"
    folder = write_set(tmp_path / case, header, identities, images, labels)
    out = tmp_path / "runs"
    line = refused(args(folder, out), caplog)
    assert str(folder / "train.rec") in line and want in line
    assert nothing_trained(out)


# ------------------------------------------------ item 9: options checked in the one config path
@pytest.mark.parametrize("option, value, want", [
    ("--seed", "-1", "--seed -1: must be in [0, 4294967295]"),
    ("--seed", str(2**32), f"--seed {2**32}: must be in"),
    ("--warmup_epochs", "inf", "--warmup_epochs inf: must be a finite number"),
    ("--lr", "nan", "--lr nan: must be a finite number"),
    ("--image_size", "100000", "--image_size 100000: must be in [1, 1024]"),
    ("--embedding_dim", "100000000", "--embedding_dim 100000000: must be in [1, 8192]"),
    ("--momentum", "50", "--momentum 50.0: must be in [0, 1)"),
])
def test_out_of_range_options_are_one_line_before_anything(tmp_path, caplog, option, value, want):
    out = tmp_path / "runs"
    line = refused(args(tmp_path / "nodata", out, option, value), caplog)
    assert want in line
    assert not out.exists()  # refused before any folder was made


# ------------------------------------------------ item 7: pack
def pack(capsys, *argv: str) -> tuple[int, str, str]:
    code = pack_main([*map(str, argv), "--no_progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pack_refuses_an_existing_destination_unless_overwrite(tmp_path, capsys):
    src, dst = faces(tmp_path / "src", 2, 2), tmp_path / "dst"
    assert pack(capsys, src, dst)[0] == 0
    before = (dst / "train.rec").read_bytes()
    code, _, err = pack(capsys, faces(tmp_path / "other", 3, 2), dst)
    assert code == 2 and str(dst) in err and "--overwrite" in err and err.count("\n") == 1
    assert (dst / "train.rec").read_bytes() == before  # nothing lost
    assert pack(capsys, src, dst, "--overwrite")[0] == 0


def test_pack_removes_a_killed_packs_temporary_files(tmp_path, capsys):
    import subprocess
    import sys

    src, dst = faces(tmp_path / "src", 2, 2), tmp_path / "dst"
    dst.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = [dst / f".{name}.{gone.pid}.tmp" for name in ("train.rec", "train.idx")]
    for path in left:
        path.write_bytes(b"half")
    assert pack(capsys, src, dst)[0] == 0
    assert not any(p.exists() for p in left) and not list(dst.glob("*.tmp"))


def test_pack_skips_an_empty_first_image_and_prints_one_summary(tmp_path, capsys, caplog):
    src = faces(tmp_path / "src", 2, 3)
    first = sorted(src.rglob("*.jpg"))[0]
    first.write_bytes(b"")
    code, out, err = pack(capsys, src, tmp_path / "dst")
    assert code == 0
    assert out.count("packed 5 images of 2 identities") == 1 and "1 empty" in out
    logged = [r.getMessage() for r in caplog.records]
    assert f"skipped {first}: empty file" in logged and not any("packed" in m for m in logged)


@pytest.mark.parametrize("where", ["file", "proc"])
def test_pack_into_a_file_or_a_virtual_file_system_is_one_line(tmp_path, capsys, where):
    src = faces(tmp_path / "src", 2, 2)
    if where == "file":
        dst = tmp_path / "a-file"
        dst.write_text("keep me")
    else:
        dst = Path("/proc/faceignite-pack")
    code, _, err = pack(capsys, src, dst)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and str(dst) in err
    if where == "file":
        assert dst.read_text() == "keep me"


# ------------------------------------------------ item 11: symlink loops, permission errors
def test_symlink_loops_in_a_data_folder_are_skipped_naming_them(tmp_path, caplog):
    root = faces(tmp_path / "data", 2, 3)
    (root / "loop").symlink_to(root / "loop")  # an identity folder that is a loop
    person = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())[0]
    (person / "self.jpg").symlink_to(person / "self.jpg")
    out = tmp_path / "runs"
    with caplog.at_level(logging.WARNING):
        main(args(root, out))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(root / "loop") in w and "symbolic links" in w for w in warned)
    assert any(str(person / "self.jpg") in w and "symbolic links" in w for w in warned)
    assert not nothing_trained(out)  # trained on the 6 real images


def test_an_unreadable_file_is_reported_as_permission_denied(tmp_path):
    """Read by a process of another user (root reads every file): forked, then setuid."""
    import shutil
    import tempfile

    from faceignite.data.dataset import DENIED, read_rgb_checked

    if os.getuid() != 0 and not hasattr(os, "setuid"):
        pytest.skip("needs a user without read permission")
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o755)
        image = folder / "face.jpg"
        shutil.copy(sorted(faces(tmp_path / "data", 1, 1).rglob("*.jpg"))[0], image)
        image.chmod(0o000)
        if os.getuid() != 0:  # this user cannot read it
            assert read_rgb_checked(str(image)) == (None, DENIED)
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nobody
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.write(write_end, str(read_rgb_checked(str(image))[1]).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        assert os.read(read_end, 100).decode() == DENIED
        image.chmod(0o644)
        assert read_rgb_checked(str(image))[1] is None  # readable: it decodes
    finally:
        shutil.rmtree(folder)


# ------------------------------------------------ item 6: a set in which no image decodes
def test_a_set_in_which_no_image_decodes_exits_2_after_the_first_epoch(tmp_path, caplog):
    root = faces(tmp_path / "data", 2, 3)
    for path in root.rglob("*.jpg"):
        path.write_bytes(b"not a picture")
    out = tmp_path / "runs"
    line = refused(args(root, out, "--epochs", "3"), caplog)
    assert "epoch 1 trained on nothing" in line and "0 image(s)" in line and "6 skipped" in line
    assert nothing_trained(out)
    assert not any("epoch 2" in r.getMessage() for r in caplog.records)


# ------------------------------------------------ item 10: resume with another loss
@pytest.mark.parametrize("older", [False, True])
def test_resuming_an_arcface_checkpoint_with_center_loss_names_both_losses(tmp_path, caplog,
                                                                          older):
    import torch

    root = faces(tmp_path / "data", 2, 3)
    out = tmp_path / "runs"
    main(args(root, out, "--epochs", "1", "--lr", "0.003"), name="resnet34_arcface",
         loss="arcface")
    (ckpt,) = sorted(out.glob("*/training_checkpoint_*.pt"))
    if older:  # a checkpoint written before criterion_class was saved
        saved = torch.load(ckpt, weights_only=True)
        del saved["criterion_class"]
        torch.save(saved, ckpt)
    before = ckpt.read_bytes()
    line = refused(args(root, out, "--epochs", "2", "--lr", "0.003", "--resume_path",
                        str(ckpt)), caplog)
    assert str(ckpt) in line
    if older:
        assert "does not fit this run's loss SoftmaxCenterLoss" in line
    else:
        assert "trained with ArcFace" in line and "loss is SoftmaxCenterLoss" in line
        assert "resnet34_arcface.py" in line
    assert ckpt.read_bytes() == before and len(list(out.glob("*/*.pt"))) == 1
