"""Pairs files: parsing, folds, image resolution, missing images and malformed lines."""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

from conftest import shared_path
from faceignite.errors import FaceIgniteError
from faceignite.verification.make_pairs import main as make_pairs_main
from faceignite.verification.pairs import find_pairs_file, match_names, read_pairs, resolve_images


def lfw_lines(folds: int, per_class: int) -> list[str]:
    """A pairs file body in LFW's layout: per fold, same pairs then different pairs."""
    lines = []
    for f in range(folds):
        lines += [f"P{f}_{k}\t1\t2" for k in range(per_class)]
        lines += [f"P{f}_{k}\t1\tQ{f}_{k}\t3" for k in range(per_class)]
    return lines


def write(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_image(path, ext: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(len(str(path))).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path.with_suffix("." + ext)), img)


def test_header_file_folds_labels_and_unique_images(tmp_path):
    pairs = read_pairs(str(write(tmp_path / "pairs.txt", ["2\t2", "Ann\t1\t2", "Ann\t2\t3",
                                                           "Ann\t1\tBob\t1", "Bob\t1\tCy\t4",
                                                           "Bob\t1\t2", "Cy\t4\t1",
                                                           "Ann\t3\tCy\t1", "Dee\t1\tBob\t2"])))
    assert len(pairs) == 8 and pairs.num_folds == 2
    assert pairs.issame.tolist() == [True, True, False, False] * 2
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.lines.tolist() == list(range(2, 10))
    # 16 image slots, 8 distinct images: each listed once
    assert len(pairs.keys) == len(set(pairs.keys)) == 8
    assert pairs.keys[pairs.left[1]] == "Ann/Ann_0002" and pairs.keys[pairs.right[3]] == "Cy/Cy_0004"


def test_headerless_lfw_pairs_txt_is_found_and_gets_the_files_folds(tmp_path):
    body = lfw_lines(10, 3)
    with_header = read_pairs(str(write(tmp_path / "pairs.txt", ["10\t3", *body])))
    folder = tmp_path / "lfw"
    folder.mkdir()
    write(folder / "lfw_pairs.txt", body)
    found = find_pairs_file(str(folder))
    assert found.endswith("lfw_pairs.txt")
    without = read_pairs(found)
    assert np.array_equal(without.folds, with_header.folds)
    assert np.bincount(without.folds).tolist() == [6] * 10
    # --lfw_pairs wins over the folder's own file
    assert find_pairs_file(str(folder), str(tmp_path / "pairs.txt")) == str(tmp_path / "pairs.txt")


def test_missing_folder_or_pairs_file_name_the_fix(tmp_path):
    with pytest.raises(FaceIgniteError, match="no pairs file in .*pairs.txt or lfw_pairs.txt"):
        find_pairs_file(str(tmp_path))
    with pytest.raises(FaceIgniteError, match="--lfw folder not found"):
        find_pairs_file(str(tmp_path / "nope"))
    with pytest.raises(FaceIgniteError, match="--lfw_pairs file not found"):
        find_pairs_file(str(tmp_path), str(tmp_path / "nope.txt"))


@pytest.mark.parametrize("bad", ["Ann\t1", "Ann\tx\t2", "Ann\t1\tBob\t2\t3", "../etc\t1\t2",
                                 "Ann\t0\t1", "10\t300", "Ann\t1\tBob\t-2"])
def test_malformed_line_names_file_and_line(tmp_path, bad):
    path = write(tmp_path / "pairs.txt", ["Ann\t1\t2", "Ann\t1\tBob\t1", bad, "Bob\t1\t2"])
    with pytest.raises(FaceIgniteError) as err:
        read_pairs(str(path))
    assert f"{path}:3: malformed pair line" in str(err.value)
    assert "\n" not in str(err.value)


def test_small_headerless_file_gets_fewer_folds_never_one(tmp_path):
    assert read_pairs(str(write(tmp_path / "a.txt", lfw_lines(1, 3)))).num_folds == 3
    with pytest.raises(FaceIgniteError, match="needs at least 2 same-person .* has 1 and 4"):
        read_pairs(str(write(tmp_path / "b.txt", ["Ann\t1\t2"] + lfw_lines(1, 4)[4:])))


def test_header_count_mismatch_is_an_error(tmp_path):
    path = write(tmp_path / "pairs.txt", ["10\t3", *lfw_lines(10, 3)[:-1]])
    with pytest.raises(FaceIgniteError, match=r"pairs.txt:1: header says 10 set\(s\).*59 pair lines"):
        read_pairs(str(path))


def test_images_resolve_as_jpg_jpeg_or_png(tmp_path):
    root = tmp_path / "lfw"
    write_image(root / "Ann" / "Ann_0001", "jpg")
    write_image(root / "Ann" / "Ann_0002", "png")
    write_image(root / "Bob" / "Bob_0001", "jpeg")
    write_image(root / "Bob" / "Bob_0012", "JPG")
    write_image(root / "Bob" / "Bob_0001_extra", "jpg")  # not an LFW name of image 1
    pairs = read_pairs(str(write(tmp_path / "p.txt", ["2\t1", "Ann\t1\t2", "Ann\t2\tBob\t1",
                                                       "Bob\t1\t12", "Ann\t1\tBob\t12"])))
    pairs, paths = resolve_images(pairs, str(root))
    names = {k: p.rsplit("/", 1)[-1] for k, p in zip(pairs.keys, paths)}
    assert names == {"Ann/Ann_0001": "Ann_0001.jpg", "Ann/Ann_0002": "Ann_0002.png",
                     "Bob/Bob_0001": "Bob_0001.jpeg", "Bob/Bob_0012": "Bob_0012.JPG"}


def _partial_lfw(tmp_path):
    """10 folds x 3 + 3 pairs, with the images of two people missing."""
    body = lfw_lines(10, 3)
    pairs = read_pairs(str(write(tmp_path / "pairs.txt", ["10\t3", *body])))
    root = tmp_path / "lfw"
    for key in pairs.keys:
        if not key.startswith(("P4_1/", "Q7_0/")):
            write_image(root / key, "jpg")
    return pairs, root


def test_missing_images_fail_with_count_and_first_paths(tmp_path):
    pairs, root = _partial_lfw(tmp_path)
    with pytest.raises(FaceIgniteError) as err:
        resolve_images(pairs, str(root))
    msg = str(err.value)
    assert f"3 of {len(pairs.keys)} images named in {pairs.path} are missing under {root}" in msg
    assert f"{root}/P4_1/P4_1_0001.{{jpg,jpeg,png}}" in msg and "--lfw_skip_missing" in msg


def test_skip_missing_drops_their_pairs_and_logs_the_count(tmp_path, caplog):
    pairs, root = _partial_lfw(tmp_path)
    with caplog.at_level(logging.WARNING, logger="faceignite"):
        kept, paths = resolve_images(pairs, str(root), skip_missing=True)
    assert len(kept) == len(pairs) - 3  # P4_1 is in one same and one different pair, Q7_0 in one
    assert len(paths) == len(kept.keys) == len(pairs.keys) - 4  # Q4_1 only paired with P4_1
    assert not any(k.startswith(("P4_1/", "Q7_0/")) for k in kept.keys)
    assert "3 of 90 images missing" in caplog.text and "skipped 3 of 60 pairs" in caplog.text
    assert kept.folds.tolist() == pairs.folds[np.isin(pairs.lines, kept.lines)].tolist()


def test_names_file_rows_match_keys_with_or_without_extension(tmp_path):
    pairs = read_pairs(str(write(tmp_path / "p.txt", ["2\t1", "Ann\t1\t2", "Ann\t1\tBob\t1",
                                                       "Ann\t2\t1", "Bob\t1\tAnn\t2"])))
    pairs, rows = match_names(pairs, ["Bob/Bob_0001.jpg", "Ann/Ann_0002", "Ann/Ann_0001.png"])
    assert dict(zip(pairs.keys, rows.tolist())) == {"Ann/Ann_0001": 2, "Ann/Ann_0002": 1,
                                                    "Bob/Bob_0001": 0}
    with pytest.raises(FaceIgniteError, match="1 of 3 images .* missing from names.txt: Bob/Bob_0001"):
        match_names(pairs, ["Ann/Ann_0001", "Ann/Ann_0002"], source="names.txt")
    with pytest.raises(FaceIgniteError, match="names.txt:3: 'Ann/Ann_0001' already named on line 1"):
        match_names(pairs, ["Ann/Ann_0001", "Bob/Bob_0001", "Ann/Ann_0001.jpg"], source="names.txt")


def test_real_lfw_pairs_parse_and_every_pair_resolves():
    pairs_file = shared_path("lfw", "pairs.txt")
    root = shared_path("lfw", "lfw-mtcnn-160")
    pairs = read_pairs(str(pairs_file))
    assert len(pairs) == 6000 and int(pairs.issame.sum()) == 3000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    assert [int(pairs.issame[pairs.folds == f].sum()) for f in range(10)] == [300] * 10
    # 12,000 image slots, ~7,700 unique images: the evaluator embeds each once
    assert 7000 < len(pairs.keys) < 8000
    resolved, paths = resolve_images(pairs, str(root))
    assert len(resolved) == 6000 and len(paths) == len(pairs.keys)
    assert all(p.endswith((".jpg", ".jpeg", ".png")) for p in paths)


def test_make_pairs_builds_an_lfw_set_the_reader_resolves(tmp_path, synthetic_root, capsys):
    train, _ = synthetic_root
    dest = tmp_path / "pairs_set"
    assert make_pairs_main([str(train), str(dest), "--folds", "4", "--per_fold", "25"]) == 0
    pairs = read_pairs(str(dest / "pairs.txt"))
    assert len(pairs) == 200 and pairs.issame.sum() == 100 and pairs.num_folds == 4
    pairs, paths = resolve_images(pairs, str(dest))
    assert len(pairs) == 200 and all(os.path.isfile(p) for p in paths)
    # each fold's people are its own, as in LFW View 2
    people = [{k.split("/")[0] for i, k in enumerate(pairs.keys)
               if i in set(pairs.left[pairs.folds == f]) | set(pairs.right[pairs.folds == f])}
              for f in range(4)]
    assert all(not people[a] & people[b] for a in range(4) for b in range(a + 1, 4))
    assert len(os.listdir(dest / sorted(os.listdir(train))[0])) == len(
        os.listdir(train / sorted(os.listdir(train))[0]))


def errors_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_make_pairs_bad_input_is_one_line_and_exit_2(tmp_path, synthetic_root, caplog):
    with pytest.raises(SystemExit) as exit_:
        make_pairs_main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert errors_of(caplog) == [f"error: identity root not found: {tmp_path / 'nowhere'}"]
    caplog.clear()
    train, _ = synthetic_root
    with pytest.raises(SystemExit) as exit_:
        make_pairs_main([str(train), str(tmp_path / "out"), "--folds", "20"])
    assert exit_.value.code == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and "24 identities cannot fill 20 folds" in errors[0]
