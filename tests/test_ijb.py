"""IJB-B/C 1:1 template verification on a small IJB-layout fixture built from real LFW crops.

The protocol is checked against a plain-loop NumPy computation written here from insightface's
``eval_ijbc.py`` description; the image path runs end to end with a real (untrained) checkpoint.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import zygote
from conftest import REPO, shared_path
from faceignite.align.five_point import warp_to_template
from faceignite.data.transforms import MEAN, STD
from faceignite.ijb import cli
from faceignite.ijb.report import FAR_TARGETS, far_label, roc_report
from faceignite.models import build_model

SIZE = 32
PEOPLE, PER_PERSON = 4, 5
FEATURE_DIM = 16


# --------------------------------------------------------------------------- the fixture
def crop_landmarks(row: dict) -> np.ndarray:
    """The five MTCNN landmarks of a landmarks.csv row, moved from the 250×250 source image into
    the 160×160 crop (the region crop_x1..crop_y2 resized to 160)."""
    x1, y1, x2, y2 = (float(row[k]) for k in ("crop_x1", "crop_y1", "crop_x2", "crop_y2"))
    points = np.array([[float(row[f"{p}_x"]), float(row[f"{p}_y"])]
                       for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")])
    return (points - [x1, y1]) * [160.0 / (x2 - x1), 160.0 / (y2 - y1)]


@pytest.fixture(scope="module")
def ijb(tmp_path_factory):
    """An IJB-C-layout folder: 4 people × 2 templates × 2 media (one media of 2 images; one media
    id reused by both templates of a person), 20 loose crops (real LFW images, linked), their
    landmarks and detector scores, all 28 template pairs (4 genuine) in shuffled order."""
    lfw = shared_path("lfw", "lfw-mtcnn-160")
    with open(lfw / "landmarks.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f) if r["fallback"] == "0" and r["left_eye_x"]}
    people = [p for p in sorted(os.listdir(lfw)) if (lfw / p).is_dir()
              and sum(f"{p}/{n}" in rows for n in os.listdir(lfw / p)) >= PER_PERSON][:PEOPLE]
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces, marks, scores, sources = [], {}, {}, {}
    rng = np.random.default_rng(0)
    for p, person in enumerate(people):
        files = sorted(n for n in os.listdir(lfw / person) if f"{person}/{n}" in rows)[:PER_PERSON]
        t1, t2 = 10 * p + 1, 10 * p + 2
        layout = [(t1, 100 * p + 1), (t1, 100 * p + 1), (t1, 100 * p + 2),
                  (t2, 100 * p + 1), (t2, 100 * p + 3)]
        for k, (file, (template, media)) in enumerate(zip(files, layout)):
            name = f"{p * PER_PERSON + k + 1}.jpg"
            (root / "loose_crop" / name).symlink_to(lfw / person / file)
            faces.append((name, template, media))
            marks[name] = crop_landmarks(rows[f"{person}/{file}"])
            scores[name] = float(np.round(rng.uniform(0.3, 1.0), 4))
            sources[name] = lfw / person / file
    templates = sorted({t for _, t, _ in faces})
    pairs = [(a, b, int(a // 10 == b // 10)) for i, a in enumerate(templates)
             for b in templates[i + 1:]]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    write_meta(root, faces, marks, scores, pairs)
    return dict(root=root, faces=faces, marks=marks, scores=scores, pairs=pairs, sources=sources)


def write_meta(root, faces, marks, scores, pairs) -> None:
    """The three meta files, in the release's format (space-separated, no header)."""
    meta = root / "meta"
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(" ".join(map(str, row)) + "\n"
                                                        for row in faces))
    (meta / "ijbc_template_pair_label.txt").write_text("".join(" ".join(map(str, row)) + "\n"
                                                           for row in pairs))
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(
        f"{n} {' '.join(f'{v:.2f}' for v in marks[n].ravel())} {scores[n]}\n" for n in marks))


def copy_case(ijb, tmp_path, faces=None, marks=None, pairs=None, crops=None):
    """A copy of the fixture's folder with some meta rows or crops changed."""
    root = tmp_path / "IJBC"
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    for name, source in ijb["sources"].items():
        if crops is None or name in crops:
            (root / "loose_crop" / name).symlink_to(source)
    write_meta(root, ijb["faces"] if faces is None else faces,
               ijb["marks"] if marks is None else marks, ijb["scores"],
               ijb["pairs"] if pairs is None else pairs)
    return root


# --------------------------------------------------------------------------- references
def reference_scores(features: dict, faces, scores: dict, pairs, norm_score: bool,
                     detector_score: bool) -> np.ndarray:
    """The protocol with plain loops: per face (optionally L2-normalised, optionally × detector
    score), mean per (template, media), sum per template, L2-normalise, dot product per pair."""
    template_feature = {}
    for template in sorted({t for _, t, _ in faces}):
        by_media: dict[int, list[np.ndarray]] = {}
        for name, t, media in faces:
            if t != template:
                continue
            f = np.array(features[name], dtype=np.float64)
            if not norm_score:
                f = f / np.sqrt((f ** 2).sum())
            if detector_score:
                f = f * scores[name]
            by_media.setdefault(media, []).append(f)
        total = np.zeros(len(f))
        for members in by_media.values():
            total = total + sum(members) / len(members)
        template_feature[template] = total / np.sqrt((total ** 2).sum())
    return np.array([sum(template_feature[a] * template_feature[b]) for a, b, _ in pairs])


def reference_tar(scores, labels, far):
    """TAR at the ROC point with FAR nearest ``far`` (tie: larger FAR, then larger TAR), on the
    curve insightface reads (scikit-learn's default ``roc_curve``): one point per distinct score
    threshold, only where the curve turns (a point whose step from the previous one equals the
    step to the next is left out), and the origin."""
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    thresholds = np.unique(scores)[::-1, None]
    counts = list(zip((impostor >= thresholds).sum(1).tolist(),
                      (genuine >= thresholds).sum(1).tolist()))
    turning = [counts[0]] + [counts[i] for i in range(1, len(counts) - 1)
                             if (counts[i][0] - counts[i - 1][0], counts[i][1] - counts[i - 1][1])
                             != (counts[i + 1][0] - counts[i][0], counts[i + 1][1] - counts[i][1])]
    points = [(0.0, 0.0)] + [(fp / len(impostor), tp / len(genuine))
                             for fp, tp in turning + [counts[-1]]]
    best = min(points, key=lambda p: (abs(p[0] - far), -p[0], -p[1]))
    return best[1]


def reference_auc(scores, labels):
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    g, i = genuine[:, None], impostor[None, :]  # every genuine-impostor pair
    return np.mean((g > i) + 0.5 * (g == i))


def run_cli(args, tmp_path) -> tuple:
    result = cli.main([*map(str, args), "--out", str(tmp_path / "out")])
    target = result.target.lower()
    return (result, np.load(tmp_path / "out" / f"{target}_scores.npy"),
            np.load(tmp_path / "out" / f"{target}_labels.npy"))


def write_features(ijb, tmp_path, extra: int = 3):
    """Random features with varied norms for the fixture's images plus ``extra`` unrelated
    rows, in shuffled order: ``(features by name, .npy, .txt)``."""
    rng = np.random.default_rng(1)
    names = [n for n, _, _ in ijb["faces"]] + [f"other_{i}.jpg" for i in range(extra)]
    features = {n: rng.normal(size=FEATURE_DIM) * rng.uniform(0.2, 3.0) for n in names}
    order = rng.permutation(len(names))
    npy, txt = tmp_path / "features.npy", tmp_path / "features.txt"
    np.save(npy, np.stack([features[names[i]] for i in order]).astype(np.float32))
    txt.write_text("".join(names[i] + "\n" for i in order))
    return {n: f.astype(np.float32) for n, f in features.items()}, npy, txt


# --------------------------------------------------------------------------- features in
@pytest.mark.parametrize("switches", [[], ["--no_detector_score"], ["--no_norm_score"],
                                      ["--no_detector_score", "--no_norm_score"]])
def test_features_in_matches_the_protocol_computed_by_hand(ijb, tmp_path, switches):
    features, npy, txt = write_features(ijb, tmp_path)
    result, scores, labels = run_cli(["--embeddings", npy, "--names", txt, "--ijb", ijb["root"],
                                      "--target", "ijbc", *switches], tmp_path)
    expected = reference_scores(features, ijb["faces"], ijb["scores"], ijb["pairs"],
                                "--no_norm_score" not in switches,
                                "--no_detector_score" not in switches)
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, [l for _, _, l in ijb["pairs"]])
    assert (result.num_genuine, result.num_impostor) == (4, 24)
    assert result.auc == pytest.approx(reference_auc(expected, labels), abs=1e-9)
    for far in FAR_TARGETS:  # 24 impostor pairs resolve FAR >= 1/24 only: the rest are n/a
        want = reference_tar(expected, labels, far) if far * 24 >= 1 else None
        assert result.tar[far] == (want if want is None else pytest.approx(want, abs=1e-12))
    assert (tmp_path / "out" / "ijbc_roc.png").stat().st_size > 1000


def test_switches_change_the_scores(ijb, tmp_path):
    """The two weightings matter on this fixture, so the test above can tell them apart."""
    features, _, _ = write_features(ijb, tmp_path)
    runs = [reference_scores(features, ijb["faces"], ijb["scores"], ijb["pairs"], n, d)
            for n in (True, False) for d in (True, False)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(runs[i] - runs[j]).max() > 1e-3


def test_tar_at_far_reads_the_nearest_roc_point_like_insightface():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(300, int), np.zeros(3000, int)]
    scores = np.r_[rng.normal(1.5, 1.0, 300), rng.normal(0.0, 1.0, 3000)]
    result = roc_report(scores, labels, "IJBB", (1e-4, 3e-4, 1e-3, 1e-2, 0.05, 1e-1))
    for far, tar in result.tar.items():
        if far * 3000 < 1:  # 3,000 impostor pairs cannot resolve FAR 1e-4 / 3e-4: n/a, no figure
            assert tar is None and result.far[far] is None and result.threshold[far] is None
            assert result.metrics()[f"tar@far={far_label(far)}"] is None
        else:
            assert tar == pytest.approx(reference_tar(scores, labels, far), abs=1e-12)
    assert "n/a" in result.table()
    # FAR 1e-3 lies midway between the turning points at 1/3000 and 5/3000: the larger is read
    assert result.far[1e-3] == pytest.approx(5 / 3000)
    assert result.auc == pytest.approx(reference_auc(scores, labels), abs=1e-9)


def test_skip_missing_drops_faces_and_the_pairs_of_empty_templates(ijb, tmp_path, caplog):
    features, npy, txt = write_features(ijb, tmp_path, extra=0)
    gone = {n for n, t, _ in ijb["faces"] if t == 12} | {ijb["faces"][0][0]}  # template 12 + 1 face
    kept_names = [n for n in txt.read_text().split() if n not in gone]
    np.save(npy, np.stack([features[n] for n in kept_names]))
    txt.write_text("\n".join(kept_names) + "\n")
    args = ["--embeddings", npy, "--names", txt, "--ijb", ijb["root"], "--no_detector_score"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args, tmp_path)
    assert exit_info.value.code == 2
    assert "has no feature row" in caplog.records[-1].getMessage()
    result, scores, labels = run_cli([*args, "--skip_missing"], tmp_path)
    faces = [f for f in ijb["faces"] if f[0] not in gone]
    pairs = [p for p in ijb["pairs"] if 12 not in p[:2]]
    assert (result.skipped_images, result.skipped_pairs) == (3, 7)
    np.testing.assert_allclose(scores, reference_scores(features, faces, ijb["scores"], pairs,
                                                        True, False), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- images in
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny", FEATURE_DIM).eval()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "tiny",
                "embedding_dimension": FEATURE_DIM, "image_size": SIZE,
                "config": {"image_size": SIZE}}, path)
    return path, model


@pytest.fixture(scope="module")
def image_run(ijb, checkpoint, tmp_path_factory):
    """The command on the fixture's crops: ``(result, scores, labels, features, names)``."""
    tmp = tmp_path_factory.mktemp("image_run")
    result, scores, labels = run_cli(["--checkpoint", checkpoint[0], "--ijb", ijb["root"],
                                      "--device", "cpu", "--batch_size", "8",
                                      "--num_workers", "1"], tmp)
    features = np.load(tmp / "out" / "ijbc_features.npy")
    names = (tmp / "out" / "ijbc_features.txt").read_text().split()
    return result, scores, labels, features, names


def test_image_path_end_to_end(ijb, checkpoint, image_run):
    model = checkpoint[1]
    result, scores, labels, features, names = image_run
    assert names == [n for n, _, _ in ijb["faces"]] and features.shape == (20, FEATURE_DIM)
    # two crops by hand: OpenCV decode, BGR → RGB, five-point warp, training normalisation,
    # raw embedding of the image plus that of its mirror
    for k in (0, 13):
        name = names[k]
        rgb = cv2.imread(str(ijb["root"] / "loose_crop" / name))[:, :, ::-1]
        marks = np.array([float(f"{v:.2f}") for v in ijb["marks"][name].ravel()]).reshape(5, 2)
        aligned = warp_to_template(np.ascontiguousarray(rgb), marks, SIZE)
        x = torch.from_numpy(((aligned / 255.0 - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)
        with torch.no_grad():
            expected = model(x[None]) + model(x.flip(2)[None])
        np.testing.assert_allclose(features[k], expected[0].numpy(), rtol=1e-4, atol=1e-4)
    expected = reference_scores(dict(zip(names, features)), ijb["faces"], ijb["scores"],
                                ijb["pairs"], True, True)
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)
    assert len(labels) == 28 and 0.0 <= result.auc <= 1.0


def test_bare_weights_file_embeds_like_its_checkpoint(ijb, checkpoint, image_run, tmp_path):
    """``--model NAME --weights FILE``: the checkpoint's network as a bare state dict."""
    weights = tmp_path / "weights.pt"
    torch.save(checkpoint[1].state_dict(), weights)
    _, scores, _ = run_cli(["--model", "tiny", "--weights", weights, "--ijb", ijb["root"],
                            "--image_size", SIZE, "--device", "cpu", "--batch_size", "8", "--num_workers", "0"],
                           tmp_path)
    np.testing.assert_allclose(scores, image_run[1], atol=1e-5, rtol=0)


def test_missing_crop_or_landmark_row_is_one_line_or_skipped(ijb, checkpoint, image_run,
                                                             tmp_path, caplog):
    names = [n for n, _, _ in ijb["faces"]]
    root = copy_case(ijb, tmp_path, crops=set(names[1:]),
                     marks={n: m for n, m in ijb["marks"].items() if n != names[5]})
    (root / "loose_crop" / names[9]).unlink()
    (root / "loose_crop" / names[9]).write_bytes(b"not a JPEG")
    args = ["--checkpoint", checkpoint[0], "--ijb", root, "--device", "cpu", "--num_workers", "0",
            "--batch_size", "8"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args, tmp_path)
    message = caplog.records[-1].getMessage()
    assert exit_info.value.code == 2 and "\n" not in message
    assert f"IJB crop not found: {root / 'loose_crop' / names[0]}" in message
    result, scores, _ = run_cli([*args, "--skip_missing"], tmp_path)
    assert (result.skipped_images, result.skipped_pairs) == (3, 0) and len(scores) == 28
    assert any(f"image {names[5]}" in r.getMessage() and "name_5pts_score.txt" in r.getMessage()
               for r in caplog.records)
    # the undecodable crop's row is left out of the features file; the others are unchanged
    kept = (tmp_path / "out" / "ijbc_features.txt").read_text().split()
    assert kept == [n for i, n in enumerate(names) if i not in (0, 5, 9)]
    full = dict(zip(image_run[4], image_run[3]))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "ijbc_features.npy"),
                               np.stack([full[n] for n in kept]), rtol=1e-5, atol=1e-5)
    # without --skip_missing, the undecodable crop stops the run, named
    root = copy_case(ijb, tmp_path / "broken")
    (root / "loose_crop" / names[9]).unlink()
    (root / "loose_crop" / names[9]).write_bytes(b"not a JPEG")
    with pytest.raises(SystemExit):
        run_cli(["--checkpoint", checkpoint[0], "--ijb", root, "--device", "cpu",
                 "--num_workers", "0", "--batch_size", "8"], tmp_path / "broken")
    message = caplog.records[-1].getMessage()
    assert message == f"error: cannot decode IJB crop {root / 'loose_crop' / names[9]} " \
                      f"(--skip_missing skips such crops)"
    assert not list((tmp_path / "broken" / "out").glob("*.npy"))  # no half-written features


# --------------------------------------------------------------------------- bad meta files
def _bad_cases(ijb):
    faces, pairs = [list(f) for f in ijb["faces"]], [list(p) for p in ijb["pairs"]]
    cases = []
    f = [row[:] for row in faces]; f[2] = f[2][:2]
    cases.append(("ijbc_face_tid_mid.txt", 3, "expected 3 columns", dict(faces=f)))
    f = [row[:] for row in faces]; f[4][2] = "x7"
    cases.append(("ijbc_face_tid_mid.txt", 5, "media_id is not an integer", dict(faces=f)))
    p = [row[:] for row in pairs]; p[3][1] = 999
    cases.append(("ijbc_template_pair_label.txt", 4, "template 999 has no image", dict(pairs=p)))
    p = [row[:] for row in pairs]; p[1][2] = "yes"
    cases.append(("ijbc_template_pair_label.txt", 2, "label is not an integer", dict(pairs=p)))
    p = [row[:] for row in pairs]; p[5] = p[5] + [1]
    cases.append(("ijbc_template_pair_label.txt", 6, "expected 3 columns", dict(pairs=p)))
    p = [row[:] for row in pairs]; p[7][2] = 2
    cases.append(("ijbc_template_pair_label.txt", 8, "label must be 1", dict(pairs=p)))
    return cases


@pytest.mark.parametrize("case", range(8))
def test_bad_meta_file_names_its_line(ijb, tmp_path, caplog, case):
    features, npy, txt = write_features(ijb, tmp_path)
    if case < 6:
        file, line, what, change = _bad_cases(ijb)[case]
        root = copy_case(ijb, tmp_path, **change)
    else:  # the landmark file, which the copy writes from arrays: edit its text
        root = copy_case(ijb, tmp_path)
        file = "ijbc_name_5pts_score.txt"
        lines = (root / "meta" / file).read_text().splitlines()
        line = (3, 7)[case - 6]
        fields = lines[line - 1].split()
        if case == 6:
            fields[3], what = "abc", "right_eye_x is not a number"
        else:
            fields, what = fields[:11], "expected 12 columns"
        lines[line - 1] = " ".join(fields)
        (root / "meta" / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--embeddings", npy, "--names", txt, "--ijb", root], tmp_path)
    message = caplog.records[-1].getMessage()
    assert exit_info.value.code == 2 and "\n" not in message
    assert f"{root / 'meta' / file} line {line}: {what}" in message


def test_command_exits_2_with_one_line(ijb, tmp_path):
    features, npy, txt = write_features(ijb, tmp_path)
    pairs = [list(p) for p in ijb["pairs"]]
    pairs[0][0] = 555
    root = copy_case(ijb, tmp_path, pairs=pairs)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = zygote.run([sys.executable, "-m", "faceignite.ijb", "--embeddings", str(npy),
                      "--names", str(txt), "--ijb", str(root), "--out", str(tmp_path / "o")],
                     capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {root / 'meta' / 'ijbc_template_pair_label.txt'} line 1: template 555 has no "
        f"image in the face_tid_mid file"]


# --------------------------------------------------------------------------- issue 30 item 8
def refused_ijb(args, caplog) -> str:
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*map(str, args)])
    assert exit_info.value.code == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in message
    return message


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_infinite_features_are_one_line_naming_the_image(ijb, tmp_path, caplog, bad):
    _, npy, txt = write_features(ijb, tmp_path)
    features = np.load(npy)
    features[2, 5] = float(bad)
    np.save(npy, features)
    name = txt.read_text().split()[2]
    out = tmp_path / "out"
    message = refused_ijb(["--embeddings", npy, "--names", txt, "--ijb", ijb["root"],
                           "--out", out], caplog)
    assert f"image {name} (row 3 of --names {txt})" in message and "NaN or infinity" in message
    assert not list(out.glob("*"))


@pytest.mark.parametrize("kind", ["no_columns", "complex"])
def test_empty_or_complex_features_are_refused(ijb, tmp_path, caplog, kind):
    _, npy, txt = write_features(ijb, tmp_path)
    features = np.load(npy)
    np.save(npy, features[:, :0] if kind == "no_columns" else features.astype(np.complex64))
    message = refused_ijb(["--embeddings", npy, "--names", txt, "--ijb", ijb["root"],
                           "--out", tmp_path / "out"], caplog)
    assert f"--embeddings {npy}" in message and "real numbers" in message


def test_a_negative_detector_score_is_refused_naming_its_line(ijb, tmp_path, caplog):
    _, npy, txt = write_features(ijb, tmp_path)
    root = copy_case(ijb, tmp_path)
    path = root / "meta" / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-1] + ["-1"])
    path.write_text("\n".join(lines) + "\n")
    message = refused_ijb(["--embeddings", npy, "--names", txt, "--ijb", root,
                           "--out", tmp_path / "out"], caplog)
    assert f"{path} line 4: detector_score -1" in message


@pytest.mark.parametrize("where", ["file", "proc"])
def test_out_on_a_file_or_virtual_file_system_is_one_line(ijb, tmp_path, caplog, where):
    _, npy, txt = write_features(ijb, tmp_path)
    out = tmp_path / "a-file" if where == "file" else Path("/proc/faceignite-ijb")
    if where == "file":
        out.write_text("keep me")
    message = refused_ijb(["--embeddings", npy, "--names", txt, "--ijb", ijb["root"],
                           "--out", out], caplog)
    assert f"--out {out}" in message or f"{out} (--out)" in message
    if where == "file":
        assert out.read_text() == "keep me"


def test_earlier_results_in_out_are_kept_unless_overwrite(ijb, tmp_path, caplog):
    _, npy, txt = write_features(ijb, tmp_path)
    args = ["--embeddings", npy, "--names", txt, "--ijb", ijb["root"], "--out", tmp_path / "out"]
    cli.main([*map(str, args)])
    metrics = (tmp_path / "out" / "ijbc_metrics.json").read_bytes()
    message = refused_ijb([*args, "--no_norm_score"], caplog)
    assert f"--out {tmp_path / 'out'} already holds ijbc_scores.npy" in message
    assert "--overwrite" in message
    assert (tmp_path / "out" / "ijbc_metrics.json").read_bytes() == metrics  # nothing lost
    cli.main([*map(str, args), "--no_norm_score", "--overwrite"])
    assert (tmp_path / "out" / "ijbc_metrics.json").read_bytes() != metrics
