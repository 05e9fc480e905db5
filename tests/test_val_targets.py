"""Several verification targets at once (``--val_targets``): a real short training run on JPEG
identity folders validating on a ``.bin`` (pickled as Python 3 writes insightface's format) and
an LFW-format folder; ``--best_by``; ``evaluate --val_targets``; the one-line errors; and the
``--image_size`` default a RecordIO ``--dataroot``'s ``property`` gives."""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
import shutil

import cv2
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import fold_pairs, pair_files
from faceignite.config import get_args_parser, parse_args
from faceignite.data.pack import pack_folder
from faceignite.evaluate import main as evaluate
from faceignite.verification.targets import best_metric, load_target, target_name
from handlers import events
from handlers.training import main as train

SUFFIXES = ("accuracy", "accuracy_std", "threshold", "val_far1e-3", "val_far1e-2", "auc", "eer")
PER_FOLD = 2  # same and different pairs per fold taken from the built-in pairs.txt


@pytest.fixture(scope="module")
def targets(synthetic_root, tmp_path_factory):
    """``cfp_mini.bin`` (the first 2 same + 2 different pairs of each fold of the built-in
    pairs set, JPEG bytes pickled as ``(images, issame)``) and ``calfw_mini/`` (the next ones,
    an LFW-format folder with its ``pairs.txt``)."""
    pairs_root = synthetic_root[1]
    base = tmp_path_factory.mktemp("targets")
    images, issame = [], []
    for line in fold_pairs(pairs_root / "pairs.txt", PER_FOLD):
        files, same = pair_files(line)
        images += [(pairs_root / p / f).read_bytes() for p, f in files]
        issame.append(same)
    chosen = fold_pairs(pairs_root / "pairs.txt", PER_FOLD, skip=PER_FOLD)
    bin_path = base / "cfp_mini.bin"
    bin_path.write_bytes(pickle.dumps((images, issame), protocol=2))
    folder = base / "calfw_mini"
    folder.mkdir()
    (folder / "pairs.txt").write_text(f"10\t{PER_FOLD}\n" + "\n".join(chosen) + "\n")
    for line in chosen:
        for person, name in pair_files(line)[0]:
            (folder / person).mkdir(exist_ok=True)
            shutil.copy(pairs_root / person / name, folder / person / name)
    return bin_path, folder


@pytest.fixture(scope="module")
def train_root(synthetic_root, tmp_path_factory):
    """4 identities x 6 real JPEGs of the built-in training set."""
    root = tmp_path_factory.mktemp("train")
    for person in sorted(p for p in synthetic_root[0].iterdir() if p.is_dir())[:4]:
        (root / person.name).mkdir()
        for image in sorted(person.iterdir())[:6]:
            shutil.copy(image, root / person.name / image.name)
    return root


def base_args(train_root, out) -> list[str]:
    return ["--dataroot", str(train_root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "4", "--warmup_epochs", "0", "--valid_split", "0",
            "--num_workers", "0", "--clearml", "off", "--device", "cpu", "--log_interval", "0"]


@pytest.fixture(scope="module")
def trained(targets, train_root, tmp_path_factory):
    """Two epochs validating on both targets, the best checkpoint by the second one."""
    bin_path, folder = targets
    out = tmp_path_factory.mktemp("runs")
    seen: list[tuple[int, dict]] = []

    def record(trainer, _state) -> None:
        trainer.add_event_handler(
            events.ValidationEvents.VERIFICATION_COMPLETED,
            lambda e: seen.append((e.state.iteration, dict(e.state.metrics))))

    metrics = train(base_args(train_root, out / "runs")
                    + ["--epochs", "2", "--val_targets", str(bin_path), str(folder),
                       "--best_by", "calfw_mini", "--tensorboard", str(out / "tb")],
                    hooks=[record])
    (run_dir,) = [d for d in (out / "runs").iterdir() if d.is_dir() and d.name != "cache"]
    return metrics, seen, run_dir, out / "tb"


def test_each_target_gets_its_metrics_log_line_and_roc_pngs(trained):
    metrics, seen, run_dir, _ = trained
    for name in ("cfp_mini", "calfw_mini"):
        # 36 impostor pairs choose a threshold: TAR at FAR 1e-3 and 1e-2 is n/a (None)
        assert all(metrics[f"{name}_{s}"] is None if s.startswith("val_far") else
                   math.isfinite(metrics[f"{name}_{s}"]) for s in SUFFIXES)
        assert 0 < metrics[f"{name}_auc"] <= 1
    assert not any(k.startswith("lfw_") for k in metrics)  # no --lfw, no built-in pairs set
    assert [it for it, _ in seen] == [6, 12]  # 24 images / batch 4: one validation per epoch
    log = (run_dir / "run.log").read_text()
    for name, kind in (("cfp_mini", "cfp_mini.bin"), ("calfw_mini", "pairs.txt")):
        lines = re.findall(rf"^.*{name}  epoch \d iteration \d+ \| accuracy .*$", log, re.M)
        assert len(lines) == 2 and all("| 40 pairs in" in line for line in lines)
        assert f"verification target {name}: " in log and kind in log
        for epoch, iteration in ((1, 6), (2, 12)):
            png = run_dir / f"roc_{name}_epoch{epoch:03d}_iter{iteration:07d}.png"
            image = cv2.imread(str(png))
            assert image is not None and image.std() > 10
    # the two targets are different pairs: their results differ
    assert seen[0][1]["cfp_mini_threshold"] != seen[0][1]["calfw_mini_threshold"]


def test_best_checkpoint_follows_best_by(trained):
    _, seen, run_dir, _ = trained
    (best,) = [p.name for p in run_dir.glob("best_checkpoint_*.pt")]
    scores = [m["calfw_mini_accuracy"] for _, m in seen]
    first_best = scores.index(max(scores))  # Ignite keeps the earlier file on a tie
    match = re.fullmatch(r"best_checkpoint_(\d+)_calfw_mini_accuracy=([0-9.]+)\.pt", best)
    assert match, best
    assert int(match.group(1)) == seen[first_best][0]
    assert float(match.group(2)) == pytest.approx(max(scores), abs=1e-4)


def test_tensorboard_gets_each_targets_scalars_and_roc(trained):
    _, seen, _, tb = trained
    (log_dir,) = tb.iterdir()
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for name in ("cfp_mini", "calfw_mini"):
        for suffix in SUFFIXES:
            if all(m[f"{name}_{suffix}"] is None for _, m in seen):  # n/a: never tracked
                assert f"{name}/{name}_{suffix}" not in acc.Tags()["scalars"]
                continue
            values = {e.step: e.value for e in acc.Scalars(f"{name}/{name}_{suffix}")}
            assert values == {it: pytest.approx(m[f"{name}_{suffix}"], abs=1e-6)
                              for it, m in seen}
        assert [i.step for i in acc.Images(f"{name}/roc")] == [6, 12]
    assert not any(t.startswith("lfw/") for t in acc.Tags()["scalars"])


def test_evaluate_prints_one_line_per_target_matching_training(trained, targets, tmp_path,
                                                               capsys):
    _, seen, run_dir, _ = trained
    bin_path, folder = targets
    (best,) = run_dir.glob("best_checkpoint_*.pt")
    iteration = int(best.name.split("_")[2])
    validated = dict(seen)[iteration]
    results = evaluate(["--checkpoint", str(best), "--val_targets", str(bin_path), str(folder),
                        "--output_dir", str(tmp_path / "ev"), "--num_workers", "0",
                        "--device", "cpu"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in lines[:2]] == ["cfp_mini", "calfw_mini"]
    for line, name in zip(lines, ("cfp_mini", "calfw_mini")):
        result = results[name]
        assert f"accuracy {result.accuracy:.4f}" in line and "TAR@FAR=1e-3" in line
        assert f"AUC {result.auc:.4f}" in line
        # the same weights, flip and distance as the training-time validation: same numbers
        assert result.auc == pytest.approx(validated[f"{name}_auc"], abs=1e-6)
        assert result.accuracy == pytest.approx(validated[f"{name}_accuracy"], abs=1e-6)
    (folder_out,) = (tmp_path / "ev").iterdir()
    saved = json.loads((folder_out / "metrics.json").read_text())
    assert set(saved["targets"]) == {"cfp_mini", "calfw_mini"}
    for name in ("cfp_mini", "calfw_mini"):
        assert cv2.imread(str(folder_out / f"roc_{name}.png")) is not None


# --------------------------------------------------------------- errors: one line, exit 2
def exits_2(run, argv, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        run(argv)
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]


def test_bad_targets_and_best_by_fail_before_training(targets, train_root, tmp_path, caplog):
    bin_path, folder = targets
    out = tmp_path / "runs"
    args = base_args(train_root, out) + ["--epochs", "1"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        shutil.copy(bin_path, tmp_path / d / "agedb.bin")
    shutil.copy(bin_path, tmp_path / "val.bin")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        "missing.bin: no such file or folder":
            ["--val_targets", str(tmp_path / "missing.bin")],
        "notes.txt: not a .bin file nor an LFW-format folder":
            ["--val_targets", str(tmp_path / "notes.txt")],
        "empty: a folder without pairs.txt or lfw_pairs.txt":
            ["--val_targets", str(tmp_path / "empty")],
        "are both named 'agedb'":
            ["--val_targets", str(tmp_path / "a" / "agedb.bin"), str(tmp_path / "b" / "agedb.bin")],
        "would be named 'val'": ["--val_targets", str(tmp_path / "val.bin")],
        "--best_by nope: not a validation target; choose one of cfp_mini, calfw_mini":
            ["--val_targets", str(bin_path), str(folder), "--best_by", "nope"],
        "--best_by cfp_mini_eer: not a validation target":
            ["--val_targets", str(bin_path), "--best_by", "cfp_mini_eer"],
        "--best_by cfp_mini: there is no verification target":  # real data, no --lfw
            ["--best_by", "cfp_mini"],
    }
    for expected, extra in cases.items():
        message = exits_2(train, args + extra, caplog)
        assert expected in message
        assert "--val_targets" in message or "--best_by" in message
    assert not out.exists()  # nothing was built: no run folder

    lfw_bin = tmp_path / "lfw.bin"
    shutil.copy(bin_path, lfw_bin)
    message = exits_2(train, args + ["--lfw", str(folder), "--val_targets", str(lfw_bin)], caplog)
    assert "lfw.bin and --lfw are both named 'lfw'" in message


def test_evaluate_bad_targets_exit_2(targets, tmp_path, caplog):
    bin_path, _ = targets
    message = exits_2(evaluate, ["--checkpoint", str(tmp_path / "none.pt"), "--val_targets",
                                 str(bin_path), str(tmp_path / "gone"), "--output_dir",
                                 str(tmp_path / "ev")], caplog)
    assert message.endswith("--val_targets " + str(tmp_path / "gone") + ": no such file or folder")
    assert not (tmp_path / "ev").exists()


def test_best_by_names_and_target_names():
    names = ["cfp_fp", "agedb_30"]
    assert best_metric(None, names) == "cfp_fp_accuracy"
    assert best_metric("agedb_30", names) == "agedb_30_accuracy"
    assert best_metric("agedb_30_auc", names) == "agedb_30_auc"
    assert best_metric(None, []) is None
    assert target_name("/data/lfw-mtcnn-160/") == "lfw_mtcnn_160"
    assert target_name("/data/faces_emore/agedb_30.bin") == "agedb_30"


def test_lfw_keeps_its_name_and_metric_prefix_whatever_the_folder(targets):
    from faceignite.verification.targets import TargetSpec

    _, folder = targets
    assert load_target(str(folder)).name == "calfw_mini"
    assert TargetSpec("lfw", str(folder)).load().name == "lfw"


# --------------------------------------------------------------- the --dataroot leftovers
def test_dataroot_help_names_recordio():
    text = " ".join(get_args_parser().format_help().split())
    assert "a .rec file" in text and "train.rec/train.idx" in text
    assert "property file" in text  # the --image_size default


def test_image_size_default_follows_a_recordio_property(synthetic_root, tmp_path):
    src = tmp_path / "ids"
    for person in sorted(p for p in synthetic_root[0].iterdir() if p.is_dir())[:2]:
        (src / person.name).mkdir(parents=True)
        for image in sorted(person.iterdir())[:2]:  # 64 px JPEGs made 112 px, as insightface's
            big = cv2.resize(cv2.imread(str(image)), (112, 112))
            cv2.imwrite(str(src / person.name / image.name), big)
    pack_folder(str(src), str(tmp_path / "rec"), progress=False)
    assert (tmp_path / "rec" / "property").read_text().strip() == "2,112,112"
    for root in (tmp_path / "rec", tmp_path / "rec" / "train.rec"):
        assert parse_args(["--dataroot", str(root)]).image_size == 112
        assert parse_args(["--dataroot", str(root), "--image_size", "64"]).image_size == 64
    assert parse_args(["--dataroot", str(src)]).image_size == 224  # identity folders
    assert parse_args([]).image_size == 64  # built-in data
    (tmp_path / "rec" / "property").unlink()  # no property: the plain default
    assert parse_args(["--dataroot", str(tmp_path / "rec")]).image_size == 224
