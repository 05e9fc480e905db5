"""Issue 18, on real files: stale index caches, truncated JPEGs, empty LFW batches, make_pairs
overwrites and repeats, unreadable checkpoints / .npy / BOM pairs files, misleading checkpoint
messages, and impossible or full output paths: one line, exit code 2, nothing lost."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_subset, one_error, shared_path
from faceignite import embed, evaluate, export, onnx_export, verify
from faceignite.data import FaceImageDataset, collate_skip_bad, load_or_build_index
from faceignite.data.dataset import is_truncated, read_rgb_checked
from faceignite.data.index import index_digest
from faceignite.data.transforms import eval_transform
from faceignite.errors import FaceIgniteError
from faceignite.verification import create_pairs_evaluator, read_pairs
from faceignite.verification.make_pairs import main as make_pairs_main, write_pairs
from faceignite.models import build_model

SIZE = 32


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real (untrained) checkpoint file, as embed/verify/evaluate read it."""
    torch.manual_seed(0)
    model = build_model("tiny", 32).eval()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "tiny",
                "embedding_dimension": 32, "image_size": SIZE, "lfw_threshold": 1.0,
                "config": {"distance": "l2", "lfw_flip": False, "image_size": SIZE}}, path)
    return path


@pytest.fixture
def faces(tmp_path) -> Path:
    """4 real CelebA faces in 2 identity folders."""
    return copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "faces", 2, 2)


# ----------------------------------------------------------------- item 4: stale index cache
def test_index_cache_follows_images_added_and_removed_inside_an_identity_folder(tmp_path, caplog):
    root = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "data", 3, 3)
    cache = str(tmp_path / "index.json")
    first = load_or_build_index(str(root), cache)
    assert len(first) == 9 and first.digest() == index_digest(first.classes, first.files)
    ident = root / first.classes[1]
    root_mtime = os.stat(root).st_mtime_ns
    shutil.copy(ident / first.files[1][0], ident / "added.jpg")  # inside a folder only
    assert os.stat(root).st_mtime_ns == root_mtime  # what the old fingerprint looked at
    grown = load_or_build_index(str(root), cache)
    assert len(grown) == 10 and "added.jpg" in grown.files[1]
    assert grown.digest() != first.digest()
    removed = ident / first.files[1][0]
    samples = grown.samples()  # taken before the removal: a run indexed, then the file went
    removed.unlink()
    shrunk = load_or_build_index(str(root), cache)
    assert len(shrunk) == 9 and removed.name not in shrunk.files[1]
    assert load_or_build_index(str(root), cache).files == shrunk.files  # served from the cache
    (root / first.classes[0] / first.files[0][0]).write_bytes(b"a text file named .jpg")
    dataset = FaceImageDataset(samples, eval_transform(SIZE))
    with caplog.at_level(logging.WARNING):
        images, _, skipped = collate_skip_bad([dataset[i] for i in range(len(dataset))])
    assert skipped == 2 and len(images) == 8
    assert f"{removed}: missing (removed since the folder was indexed)" in caplog.text
    assert f"{first.files[0][0]}: does not decode" in caplog.text


def test_resume_after_images_were_added_inside_a_folder_fails_the_data_check(tmp_path, caplog):
    from handlers.training import main

    root = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "data", 3, 4)
    out = tmp_path / "runs"
    args = ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", str(SIZE),
            "--batch_size", "4", "--epochs", "1", "--valid_split", "0.25", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu"]
    main(args)
    (ckpt,) = out.rglob("training_checkpoint_*.pt")
    assert list(out.rglob("index-*.json"))  # the index cache the resume reads
    saved = ckpt.read_bytes()
    ident = root / sorted(os.listdir(root))[0]
    shutil.copy(ident / sorted(os.listdir(ident))[0], ident / "zz_added.jpg")
    caplog.clear()
    with pytest.raises(SystemExit) as exc:
        main(args + ["--resume_path", str(ckpt), "--epochs", "2"])  # the same index cache
    assert exc.value.code == 2
    assert "the training folder changed since it was saved" in one_error(caplog)
    assert ckpt.read_bytes() == saved  # the run's checkpoint untouched


# ----------------------------------------------------------------- item 9: truncated JPEGs
def test_truncated_jpeg_is_skipped_naming_the_file_never_decoded_half_grey(checkpoint, faces,
                                                                           caplog, capfd):
    files = sorted(faces.rglob("*.jpg"))
    cut_in_half(files[0])
    image, problem = read_rgb_checked(str(files[0]))
    assert image is None and problem == "truncated"
    data = files[1].read_bytes()
    assert not is_truncated(data) and not is_truncated(data + b"\0" * 64 + b"trailer")
    assert all(is_truncated(data[:k]) for k in range(2, len(data), 97))  # every cut found
    dataset = FaceImageDataset([(str(f), 0) for f in files], eval_transform(SIZE))
    with caplog.at_level(logging.WARNING):
        images, _, skipped = collate_skip_bad([dataset[i] for i in range(len(dataset))])
    assert skipped == 1 and len(images) == len(files) - 1
    assert f"skipping image {files[0]}: truncated" in caplog.text
    assert "Premature end of JPEG file" not in capfd.readouterr().err  # never decoded
    caplog.clear()
    with pytest.raises(SystemExit) as exc:
        verify.main([str(files[0]), str(files[1]), "--checkpoint", str(checkpoint)])
    assert exc.value.code == 2
    assert one_error(caplog) == (f"error: cannot decode image {files[0]}: truncated (the file "
                                 "ends before the image does)")


def test_no_real_face_image_is_taken_for_truncated():
    files = sorted(shared_path("celeba_subset", "aligned-160").rglob("*.jpg"))
    assert len(files) > 1000
    assert [f for f in files if is_truncated(f.read_bytes())] == []


# ----------------------------------------------------------------- item 2: empty LFW batches
def test_lfw_batch_with_no_decodable_image_is_skipped_not_a_crash(tmp_path, caplog):
    lfw = shared_path("lfw", "lfw-mtcnn-160")
    lines = shared_path("lfw", "pairs.txt").read_text().splitlines()
    chosen = lines[1:4] + lines[301:304]  # 3 same + 3 different pairs of real faces
    (tmp_path / "pairs.txt").write_text("\n".join(chosen) + "\n")
    for line in chosen:
        for name in line.split()[::2] if len(line.split()) == 4 else line.split()[:1]:
            if not (tmp_path / name).exists():
                shutil.copytree(lfw / name, tmp_path / name)
    name, i, j = chosen[0].split()  # the first two images: the whole first batch of 2
    first = tmp_path / name / f"{name}_{int(i):04d}.jpg"
    second = tmp_path / name / f"{name}_{int(j):04d}.jpg"
    cut_in_half(first)
    second.write_bytes(b"not a picture")
    torch.manual_seed(0)
    evaluator = create_pairs_evaluator(build_model("tiny", 16).eval(), str(tmp_path), "cpu",
                                       SIZE, batch_size=2, skip_missing=True)
    with caplog.at_level(logging.WARNING):
        result = evaluator.run()
    assert result.skipped_pairs == 1 and result.num_pairs == 5
    assert f"{first}: truncated" in caplog.text and f"{second}: does not decode" in caplog.text


# ----------------------------------------------------------------- item 8: make_pairs
def test_make_pairs_refuses_to_overwrite_pairs_txt_unless_forced(tmp_path, caplog):
    source = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "src", 4, 3)
    dest = tmp_path / "set"
    args = [str(source), str(dest), "--folds", "2", "--per_fold", "2"]
    assert make_pairs_main(args) == 0
    before = (dest / "pairs.txt").read_bytes()
    caplog.clear()
    with pytest.raises(SystemExit) as exit_:
        make_pairs_main(args + ["--seed", "1"])
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"error: {dest / 'pairs.txt'} exists: pass --force to replace it, "
                      f"or choose another dest"]
    assert (dest / "pairs.txt").read_bytes() == before
    assert make_pairs_main(args + ["--seed", "1", "--force"]) == 0
    assert len(read_pairs(str(dest / "pairs.txt"))) == 8


def _pair_keys(lines: list[str]) -> list[tuple]:
    keys = []
    for line in lines:
        t = line.split("\t")
        keys.append((t[0], *sorted(t[1:])) if len(t) == 3
                    else tuple(sorted([(t[0], t[1]), (t[2], t[3])])))
    return keys


def test_make_pairs_never_repeats_a_pair_in_a_fold(tmp_path):
    counts = {f"P{i:02d}": 2 + i % 3 for i in range(8)}  # 2 folds of 4 people, 2-4 images
    path = tmp_path / "pairs.txt"
    for seed in range(300):
        write_pairs(str(path), counts, np.random.default_rng(seed), folds=2, per_fold=6)
        lines = path.read_text().splitlines()[1:]
        for fold in range(2):
            block = lines[fold * 12:(fold + 1) * 12]
            assert len(set(_pair_keys(block[:6]))) == 6 and len(set(_pair_keys(block[6:]))) == 6
    with pytest.raises(FaceIgniteError, match="only 4 distinct same-person pairs, fewer than "
                                              "--per_fold 5"):  # 4 people x 2 images a fold
        write_pairs(str(path), dict.fromkeys(counts, 2), np.random.default_rng(0), 2, 5)


def test_builtin_pairs_set_is_valid_with_no_repeated_pair(synthetic_root):
    _, pairs_root = synthetic_root
    pairs = read_pairs(str(pairs_root / "pairs.txt"))
    assert len(pairs) == 600 and pairs.num_folds == 10
    lines = (pairs_root / "pairs.txt").read_text().splitlines()[1:]
    repeats = [k for fold in range(10) for k, n in Counter(_pair_keys(lines[fold * 60:(fold + 1) * 60])).items() if n > 1]
    assert repeats == []
    assert all((pairs_root / f"{key}.jpg").is_file() for key in pairs.keys)


# ----------------------------------------------------------------- item 12: unreadable inputs
def test_text_checkpoint_empty_npy_and_bom_pairs_file(checkpoint, faces, tmp_path, caplog):
    text = tmp_path / "model.pt"
    text.write_text("these are my notes, not a model\n")
    with pytest.raises(SystemExit) as exc:
        embed.main(["--checkpoint", str(text), str(faces), "--out", str(tmp_path / "e.npy")])
    assert exc.value.code == 2
    assert one_error(caplog) == f"error: {text} is a text file, not a PyTorch checkpoint"
    for content in (b"", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4',"):  # empty, cut in its header
        caplog.clear()
        npy = tmp_path / "emb.npy"
        npy.write_bytes(content)
        (tmp_path / "names.txt").write_text("Ann/Ann_0001\n")
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--embeddings", str(npy), "--names", str(tmp_path / "names.txt"),
                           "--lfw_pairs", str(shared_path("lfw", "pairs.txt")),
                           "--output_dir", str(tmp_path / "runs")])
        assert exc.value.code == 2 and str(npy) in one_error(caplog)
    caplog.clear()
    empty_image = tmp_path / "a.jpg"
    empty_image.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        verify.main([str(empty_image), str(next(faces.rglob("*.jpg"))), "--checkpoint",
                     str(checkpoint)])
    assert exc.value.code == 2 and f"cannot decode image {empty_image}" in one_error(caplog)
    plain = shared_path("lfw", "pairs.txt").read_text()
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + plain.encode())
    with_bom, without = read_pairs(str(tmp_path / "bom.txt")), read_pairs(str(shared_path("lfw", "pairs.txt")))
    assert with_bom.keys == without.keys and (with_bom.folds == without.folds).all()


# ----------------------------------------------------------------- item 13: messages
class Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_malicious_checkpoint_is_refused_as_such_never_advising_to_turn_safety_off(
        faces, tmp_path, caplog):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": Payload(marker), "model_architecture": "tiny",
                "embedding_dimension": 32}, evil)
    bare = tmp_path / "bare.pt"
    bare.write_bytes(__import__("pickle").dumps({"model_state_dict": Payload(marker)}))
    for path in (evil, bare):
        for command in (lambda: embed.main(["--checkpoint", str(path), str(faces), "--out",
                                            str(tmp_path / "e.npy")]),
                        lambda: export.main(["--checkpoint", str(path), "--out", str(tmp_path / "x")])):
            caplog.clear()
            with pytest.raises(SystemExit) as exc:
                command()
            line = one_error(caplog)
            assert exc.value.code == 2
            assert f"refusing to load {path}: it holds code or objects that are refused (not " \
                   "loaded, for safety)" in line
            assert "weights_only" not in line and "Re-running" not in line
            assert "io.open" in line  # what it would have called
    assert not marker.exists() and not (tmp_path / "e.npy").exists()


def test_model_folders_without_checkpoint_or_json_advise_the_commands_option(
        checkpoint, faces, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    half_export = tmp_path / "export"
    export.export_embedding_model(str(checkpoint), str(half_export))
    (half_export / export.CONFIG_FILE).unlink()
    for folder, expected in ((empty, "holds no training_checkpoint_<iteration>.pt and no exported model"),
                             (half_export, f"has {export.WEIGHTS_FILE} but no {export.CONFIG_FILE}")):
        for command in (lambda: embed.main(["--checkpoint", str(folder), str(faces), "--out",
                                            str(tmp_path / "e.npy")]),
                        lambda: verify.main([str(next(faces.rglob("*.jpg")))] * 2
                                            + ["--checkpoint", str(folder)])):
            caplog.clear()
            with pytest.raises(SystemExit) as exc:
                command()
            line = one_error(caplog)
            assert exc.value.code == 2 and expected in line and str(folder) in line
            assert "--checkpoint" in line and "--resume_path" not in line
    caplog.clear()
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(empty), "--out", str(tmp_path / "x")])
    line = one_error(caplog)
    assert "pass a checkpoint file to --checkpoint" in line and "--resume_path" not in line


# ----------------------------------------------------------------- item 11: output paths
def _mount_tmpfs(path: Path, *options: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k",) + options),
                           "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root with CAP_SYS_ADMIN needed): {done.stderr.strip()}")


def test_impossible_out_paths_fail_at_once_with_one_line(checkpoint, faces, tmp_path, caplog):
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    cases = [(embed.main, ["--checkpoint", str(checkpoint), str(faces), "--out"],
              str(a_file / "sub" / "faces.npy"), "a file is in the way"),
             (onnx_export.main, ["--checkpoint", str(checkpoint), "--out"],
              "/proc/faceignite/model.onnx", "cannot make its folder"),
             (onnx_export.main, ["--checkpoint", str(checkpoint), "--out"],
              str(tmp_path), "is a folder")]
    for command, args, out, expected in cases:
        caplog.clear()
        with pytest.raises(SystemExit) as exc:
            command(args + [out])
        line = one_error(caplog)
        assert exc.value.code == 2 and line.startswith(f"error: --out {os.path.abspath(out)}")
        assert expected in line
    readonly = tmp_path / "readonly"
    _mount_tmpfs(readonly, "ro")
    try:
        caplog.clear()
        with pytest.raises(SystemExit) as exc:
            onnx_export.main(["--checkpoint", str(checkpoint), "--out", str(readonly / "m.onnx")])
        line = one_error(caplog)
        assert exc.value.code == 2 and f"cannot write {readonly / 'm.onnx'} (--out): read-only" in line
    finally:
        subprocess.run(["umount", str(readonly)], check=True)


def test_full_disk_says_no_space_left_and_keeps_the_earlier_file(checkpoint, faces, tmp_path,
                                                                 caplog):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk)
    try:
        earlier = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.save(disk / "faces.npy", earlier)
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:
                pass
        with pytest.raises(SystemExit) as exc:
            embed.main(["--checkpoint", str(checkpoint), str(faces), "--out",
                        str(disk / "faces.npy"), "--device", "cpu"])
        assert exc.value.code == 2
        assert one_error(caplog) == f"error: no space left on device writing {disk / 'faces.npy'} (--out)"
        assert (np.load(disk / "faces.npy") == earlier).all()  # nothing lost
        assert sorted(os.listdir(disk)) == ["faces.npy", "filler"]  # no partial file left
    finally:
        subprocess.run(["umount", str(disk)], check=True)
