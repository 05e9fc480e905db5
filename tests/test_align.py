"""Face alignment CLI: real MTCNN on the real LFW raw sample, compared with the reference crops."""
from __future__ import annotations

import csv
import logging
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import zygote
from conftest import REPO, installed, shared_path
from faceignite import align

pytestmark = pytest.mark.skipif(not installed("facenet_pytorch"),
                                reason="pip install facenet-pytorch==2.5.3")

SUMMARY = "aligned {} | no face {} | failed {} | skipped (existing) {}"


def _summary_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("aligned ")]
    assert lines, "no summary line logged"
    return lines[-1]


def _best_shift_mad(a: np.ndarray, b: np.ndarray, max_shift: int = 2) -> float:
    """Smallest mean absolute difference of ``a`` and ``b`` over shifts of up to ``max_shift`` px."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    h, w = a.shape[:2]
    best = float("inf")
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            pa = a[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
            pb = b[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            best = min(best, float(np.abs(pa - pb).mean()))
    return best


@pytest.fixture(scope="module")
def lfw_run(tmp_path_factory):
    """The CLI once over a fixed subset of the LFW raw sample (~10 s on 2 CPU cores).

    Every 4th photo of the 154, plus every photo where davidsandberg's rule picks a face other than
    the detector's first, so the multi-face choice is tested too (the full sample takes ~4x longer).
    """
    raw = shared_path("lfw", "raw-sample")
    ref = shared_path("lfw", "lfw-mtcnn-160")
    with open(ref / "landmarks.csv", newline="") as f:
        reference = {r["path"]: r for r in csv.DictReader(f)}
    photos = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.jpg"))
    subset = [rel for i, rel in enumerate(photos) if i % 4 == 0 or reference[rel]["face_index"] != "0"]
    src = tmp_path_factory.mktemp("raw") / "raw-sample"
    for rel in subset:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw / rel, src / rel)
    dst = src.parent / "lfw-160"
    marks = src.parent / "landmarks.csv"
    rc = align.main([str(src), str(dst), "--image_size", "160", "--margin", "32", "--device", "cpu",
                     "--landmarks", str(marks), "--no_progress"])
    return src, ref, dst, marks, rc, reference


def test_raw_sample_matches_reference_crops(lfw_run):
    src, ref, dst, marks, rc, reference = lfw_run
    assert rc == 0
    sources = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpg"))
    assert len(sources) >= 40 and any(reference[rel]["face_index"] != "0" for rel in sources)
    listed = set(align.read_list(str(dst / align.NO_FACE_FILE)))
    close, crops_agree = 0, 0
    with open(marks, newline="") as f:
        ours = {r["path"]: r for r in csv.DictReader(f)}
    for rel in sources:
        out = dst / rel
        if not out.exists():
            assert rel in listed, f"{rel}: no crop and not listed"
            continue
        crop = np.asarray(Image.open(out).convert("RGB"))
        assert crop.shape == (160, 160, 3), rel
        expected = np.asarray(Image.open(ref / rel).convert("RGB"))
        close += _best_shift_mad(crop, expected) < 3.0
        keys = ("crop_x1", "crop_y1", "crop_x2", "crop_y2")
        crops_agree += all(abs(int(ours[rel][k]) - int(reference[rel][k])) <= 2 for k in keys)
    assert close >= 0.95 * len(sources), f"only {close}/{len(sources)} crops match the reference"
    assert crops_agree >= 0.95 * len(sources), f"crop regions: {crops_agree}/{len(sources)} within 2 px"


def test_landmarks_csv_in_source_pixels(lfw_run):
    src, _, dst, marks, _, reference = lfw_run
    with open(marks, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == align.LANDMARK_COLUMNS
    assert len(rows) == len({r["path"] for r in rows}) == len(list(src.rglob("*.jpg")))
    for r in rows:
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250 and float(r["prob"]) > 0.9
        # eyes above the mouth, left eye left of the right eye, all inside the box
        assert float(r["left_eye_x"]) < float(r["right_eye_x"])
        assert float(r["left_eye_y"]) < float(r["mouth_left_y"])
        assert x1 <= float(r["nose_x"]) <= x2 and y1 <= float(r["nose_y"]) <= y2


def test_second_run_skips_everything(lfw_run, caplog):
    src, _, dst, marks, _, _ = lfw_run
    n = len(list(src.rglob("*.jpg")))
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    caplog.set_level(logging.INFO)
    assert align.main([str(src), str(dst), "--device", "cpu", "--landmarks", str(marks),
                       "--no_progress"]) == 0
    assert _summary_line(caplog) == SUMMARY.format(0, 0, 0, n)
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")} == before
    with open(marks, newline="") as f:
        assert len(list(csv.DictReader(f))) == n


@pytest.fixture
def mixed_src(tmp_path):
    """Real faces (JPEG, RGBA PNG, nested), a blank photo, a tiny PNG, a broken JPEG, a text file."""
    raw = shared_path("lfw", "raw-sample")
    src = tmp_path / "src"
    (src / "Person_A").mkdir(parents=True)
    (src / "Person_B").mkdir()
    (src / "Person_C" / "2019" / "summer").mkdir(parents=True)
    shutil.copy(raw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", src / "Person_A" / "a1.jpg")
    Image.open(raw / "Abdullah" / "Abdullah_0001.jpg").convert("RGBA").save(src / "Person_A" / "a2.png")
    shutil.copy(raw / "Alec_Baldwin" / "Alec_Baldwin_0001.jpg", src / "Person_C" / "2019" / "summer" / "c.jpg")
    Image.new("RGB", (250, 250), (128, 128, 128)).save(src / "Person_B" / "blank.jpg")
    Image.new("RGB", (8, 8), (200, 150, 120)).save(src / "Person_B" / "tiny.png")
    (src / "Person_B" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "Person_B" / "notes.txt").write_text("not an image")
    return src


def test_no_face_and_broken_files_are_listed_then_resumed(mixed_src, tmp_path, caplog):
    dst = tmp_path / "dst"
    caplog.set_level(logging.INFO)
    args = [str(mixed_src), str(dst), "--device", "cpu", "--batch_size", "2", "--no_progress"]
    assert align.main(args) == 0
    assert _summary_line(caplog) == SUMMARY.format(3, 2, 1, 0)
    for rel in ("Person_A/a1.jpg", "Person_A/a2.jpg", "Person_C/2019/summer/c.jpg"):
        assert Image.open(dst / rel).size == (160, 160)
    assert not (dst / "Person_B" / "blank.jpg").exists()
    assert align.read_list(str(dst / "no_face.txt")) == ["Person_B/blank.jpg", "Person_B/tiny.png"]
    failed = (dst / "failed.txt").read_text().splitlines()
    assert len(failed) == 1 and failed[0].startswith("Person_B/broken.jpg\t")

    caplog.clear()   # same policy: listed no-face photos count as done, the broken one is retried
    assert align.main(args) == 0
    assert _summary_line(caplog) == SUMMARY.format(0, 0, 1, 5)

    caplog.clear()   # centre-crop fallback for the listed ones
    assert align.main(args + ["--no_face", "center", "--ext", "png"]) == 0
    assert _summary_line(caplog) == SUMMARY.format(3, 2, 1, 0)
    assert Image.open(dst / "Person_B" / "blank.png").size == (160, 160)
    assert Image.open(dst / "Person_B" / "tiny.png").size == (160, 160)
    assert align.read_list(str(dst / "no_face.txt")) == ["Person_B/blank.jpg", "Person_B/tiny.png"]


def test_fallback_crop_is_lfw_centre_crop():
    assert align.center_box(250, 250, 0.48) == (65, 65, 185, 185)
    assert align.crop_box((67.49, 64.50, 167.29, 199.84), 32, 250, 250) == (51, 48, 183, 215)
    assert align.crop_box((-3.0, 2.0, 240.2, 251.0), 32, 250, 250) == (0, 0, 250, 250)
    # big central face beats a bigger face far off-centre; the largest wins when both are central
    boxes = np.array([[0, 0, 100, 100], [100, 100, 180, 180]], dtype=float)
    assert align.choose_face(boxes, 250, 250) == 1
    assert align.choose_face(np.array([[80, 80, 170, 170], [90, 90, 160, 160]], float), 250, 250) == 0


def test_bad_input_is_one_line(mixed_src, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit) as exit_:
        align.main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "--no_progress"])
    assert exit_.value.code == 2
    assert "source folder not found" in caplog.text
    Image.new("RGB", (40, 40)).save(mixed_src / "Person_A" / "a1.png")
    caplog.clear()
    with pytest.raises(SystemExit) as exit_:
        align.main([str(mixed_src), str(tmp_path / "out"), "--no_progress"])
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "a1.jpg" in errors[0] and "--ext keep" in errors[0]


def test_missing_facenet_pytorch_says_how_to_install(mixed_src, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)   # import now raises ImportError
    with pytest.raises(SystemExit) as exit_:
        align.main([str(mixed_src), str(tmp_path / "out"), "--no_progress"])
    assert exit_.value.code == 2
    assert "pip install facenet-pytorch==2.5.3" in caplog.text


def test_cli_module_and_lazy_import(tmp_path):
    code = ("import sys, faceignite.align, faceignite.data, faceignite.engine; "
            "assert 'facenet_pytorch' not in sys.modules; "
            "sys.argv = ['x', sys.argv[1], sys.argv[2]]; "
            "import runpy; runpy.run_module('faceignite.align', run_name='__main__')")
    out = zygote.run([sys.executable, "-c", code, str(tmp_path / "none"), str(tmp_path / "o")],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "source folder not found" in errors[0]
    assert "Traceback" not in out.stderr
