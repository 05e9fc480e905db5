"""Issue 30, items 13-19: the friction a new user meets in the first hour.

Real runs of the test-size network (``--model tiny --image_size 32``) on a few real JPEG files of
the built-in data; real pairs files, ``.bin`` files and embeddings written here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import runpy
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from conftest import REPO, copy_subset
from conftest import SMALL_PAIRS_PER_FOLD as PER_FOLD  # pairs.txt: 10 folds x (5 same + 5 diff)

from faceignite.cli import EXIT_PREEMPTED
from faceignite.config import options_group, parse_args
from faceignite.errors import FaceIgniteError
from faceignite.models.registry import SPECS
from handlers.training import main as train


@pytest.fixture(scope="module")
def train_root(synthetic_root, tmp_path_factory):
    """4 identities x 4 real JPEGs: 12 training + 4 held out (--valid_split 0.25), batch 4."""
    return copy_subset(synthetic_root[0], tmp_path_factory.mktemp("train"), 4, 4)


def args(train_root, out, *more) -> list[str]:
    return ["--dataroot", str(train_root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32", "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0",
            "--valid_split", "0.25", "--num_workers", "0", "--clearml", "off", "--device",
            "cpu", "--log_interval", "0", *more]


def runs_in(out) -> list:
    return sorted(d for d in out.iterdir() if d.is_dir() and d.name != "cache")


def exits_2(command, argv, caplog) -> str:
    """Run ``command(argv)``; assert exit code 2 and one error line; return it."""
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        command(argv)
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0]
    return errors[0]


# --------------------------------------------------------------------------- item 13
def test_embedding_dim_default_is_the_architectures_own():
    for name, facts in SPECS.items():  # every registry entry, those added later too
        size = facts.input_size or 32
        cfg = parse_args(["--model", name, "--image_size", str(size)])
        assert cfg.embedding_dim == facts.embedding_dim, name
    assert parse_args(["--model", "iresnet50", "--image_size", "112"]).embedding_dim == 512
    assert parse_args(["--model", "resnet34"]).embedding_dim == 128
    assert parse_args(["--model", "mobilefacenet", "--image_size", "112"]).embedding_dim == 128
    assert parse_args(["--model", "iresnet50", "--embedding_dim", "64"]).embedding_dim == 64


def test_config_json_records_every_value_used(train_root, small_pairs, tmp_path):
    train(args(train_root, tmp_path, "--lfw", str(small_pairs)), loss="arcface",
          name="resnet34_arcface")
    (run_dir,) = runs_in(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["margin"] == 0.5 and config["embedding_dim"] == 128  # ArcFace's, tiny's
    assert config["name"] == run_dir.name and config["best_by"] == "lfw_accuracy"
    assert os.path.isfile(config["index_cache"])
    nulls = sorted(k for k, v in config.items() if v is None)
    # only options that are off or not given (no default applies to them)
    assert set(nulls) <= {"pretrained", "identities_per_batch", "images_per_identity",
                          "lfw_pairs", "val_targets", "val_pairs", "resume_path", "max_time",
                          "tensorboard", "config", "gpus", "n_triplets"}, nulls  # off, not given


# --------------------------------------------------------------------------- item 14
def test_run_names_and_one_cache_folder(train_root, tmp_path, caplog):
    train(args(train_root, tmp_path))
    (run_dir,) = runs_in(tmp_path)
    assert re.fullmatch(r"resnet34_center-tiny-\d{8}-\d{6}", run_dir.name)  # experiment + model
    assert not list(tmp_path.glob("index-*.json"))  # no cache files among the runs
    assert list((tmp_path / "cache").glob("index-*.json"))
    train(args(train_root, tmp_path, "--name", "first_try"))
    assert (tmp_path / "first_try" / "training_checkpoint_3.pt").is_file()
    before = (tmp_path / "first_try" / "training_checkpoint_3.pt").read_bytes()
    line = exits_2(train, args(train_root, tmp_path, "--name", "first_try"), caplog)
    assert "--name first_try" in line and "exists" in line
    assert (tmp_path / "first_try" / "training_checkpoint_3.pt").read_bytes() == before


# --------------------------------------------------------------------------- item 15
def test_best_and_latest_of_one_iteration_are_one_file(train_root, small_pairs, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(args(train_root, tmp_path, "--lfw", str(small_pairs)))
    (run_dir,) = runs_in(tmp_path)
    (best,) = run_dir.glob("best_checkpoint_3_lfw_accuracy=*.pt")
    latest = run_dir / "training_checkpoint_3.pt"
    assert os.path.samefile(best, latest)  # a hard link: stored once
    (done,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    assert f"best checkpoint {best} (lfw_accuracy " in done


def test_run_folder_commands_use_the_best_checkpoint(train_root, small_pairs, tmp_path, caplog):
    from faceignite import evaluate, export

    train(args(train_root, tmp_path / "runs", "--lfw", str(small_pairs), "--epochs", "2"))
    (run_dir,) = runs_in(tmp_path / "runs")
    (best,) = run_dir.glob("best_checkpoint_*.pt")
    with caplog.at_level(logging.INFO):
        out = export.main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "m")])
    said = json.loads((tmp_path / "m" / export.CONFIG_FILE).read_text())["trained"]["checkpoint"]
    assert said == str(best)
    assert any("best checkpoint" in r.getMessage() and best.name in r.getMessage()
               for r in caplog.records)
    export.main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "l"), "--which", "latest"])
    said = json.loads((tmp_path / "l" / export.CONFIG_FILE).read_text())["trained"]["checkpoint"]
    assert said == str(run_dir / "training_checkpoint_6.pt") and out
    # a failed evaluate leaves no evaluate-* folder behind
    (tmp_path / "empty").mkdir()
    line = exits_2(evaluate.main, ["--checkpoint", str(run_dir), "--lfw", str(tmp_path / "empty"),
                                   "--output_dir", str(tmp_path / "ev"), "--device", "cpu"],
                   caplog)
    assert str(tmp_path / "empty") in line
    assert not list((tmp_path / "ev").glob("evaluate-*"))
    # a run folder given with a trailing slash names the ROC after the folder (not "roc_.png")
    evaluate.main(["--checkpoint", f"{run_dir}/", "--lfw", str(small_pairs), "--output_dir",
                   str(tmp_path / "ev"), "--device", "cpu"])
    (ev_dir,) = (tmp_path / "ev").glob("evaluate-*")
    assert (ev_dir / f"roc_{run_dir.name}.png").is_file()


def test_runs_list_and_clean(tmp_path, capsys, caplog):
    from faceignite import runs

    old, new = tmp_path / "old_run", tmp_path / "new_run"
    for folder in (old, new):
        folder.mkdir()
        (folder / "training_checkpoint_3.pt").write_bytes(b"x" * 5000)
        os.link(folder / "training_checkpoint_3.pt",
                folder / "best_checkpoint_3_lfw_accuracy=0.9.pt")  # counted once
        (folder / "run.log").write_text("log\n")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index-0123456789ab.json").write_text("{}")
    month_ago = time.time() - 40 * 86400
    for path in [old, *old.iterdir()]:
        os.utime(path, (month_ago, month_ago))
    entries = {e.name: e for e in runs.main(["list", "--output_dir", str(tmp_path)])}
    assert entries["old_run"].size == 5004 + os.lstat(old).st_size
    assert entries["old_run"].best == "lfw_accuracy 0.9" and entries["cache"].cache
    assert "old_run" in capsys.readouterr().out
    line = exits_2(runs.main, ["clean", "--output_dir", str(tmp_path)], caplog)
    assert "--older_than" in line  # removes only what it is told to
    runs.main(["clean", "--output_dir", str(tmp_path), "--older_than", "30", "--dry_run"])
    assert old.is_dir() and "would remove old_run" in capsys.readouterr().out
    removed = runs.main(["clean", "--output_dir", str(tmp_path), "--older_than", "30"])
    assert [e.name for e in removed] == ["old_run"]
    assert not old.exists() and new.is_dir() and (tmp_path / "cache").is_dir()
    runs.main(["clean", "--output_dir", str(tmp_path), "new_run"])  # written just now: kept
    assert new.is_dir() and "perhaps still running" in capsys.readouterr().out
    line = exits_2(runs.main, ["clean", "--output_dir", str(tmp_path), "no_such_run"], caplog)
    assert "no_such_run" in line


# --------------------------------------------------------------------------- item 16
def test_resume_keeps_the_first_config_and_records_what_changed(train_root, tmp_path):
    train(args(train_root, tmp_path))
    (run_dir,) = runs_in(tmp_path)
    first = (run_dir / "config.json").read_text()
    train(args(train_root, tmp_path, "--epochs", "2", "--resume_path", str(run_dir)))
    assert (run_dir / "config.json").read_text() == first
    resume = json.loads((run_dir / "config.resume-1.json").read_text())
    assert resume["changed"]["epochs"] == {"before": 1, "now": 2}
    assert resume["options"]["epochs"] == 2 and "dataroot" not in resume["changed"]
    log = (run_dir / "run.log").read_text()
    assert log.count("resnet34_center: output in") == 2  # appended, not replaced


def test_interrupt_keeps_the_last_line_and_resume_names_the_same_epoch(train_root, tmp_path,
                                                                      caplog):
    def sigterm_at_iteration_4(trainer, _state):
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4),
                                  lambda _: os.kill(os.getpid(), signal.SIGTERM))

    # 3 iterations an epoch; the run checks for a signal every 5 iterations (--log_interval 5)
    argv = args(train_root, tmp_path, "--epochs", "3")
    argv[argv.index("--log_interval") + 1] = "5"
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        train(argv, hooks=[sigterm_at_iteration_4], handle_signals=True)
    assert exit_.value.code == EXIT_PREEMPTED
    (run_dir,) = runs_in(tmp_path)
    log = (run_dir / "run.log").read_text()
    assert "epoch 2 iteration 5 |" in log  # the last iteration's line, not lost
    said = re.search(r"interrupted by SIGTERM at (epoch \d+ iteration \d+)", log).group(1)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(args(train_root, tmp_path, "--epochs", "3", "--resume_path", str(run_dir)))
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert resumed and resumed[0].endswith(f"({said})") and said == "epoch 2 iteration 5"


# --------------------------------------------------------------------------- item 17
def test_pack_writes_a_bin_the_reader_reads_back(small_pairs, tmp_path):
    from faceignite.data import pack
    from faceignite.verification.bin_set import load_bin
    from faceignite.verification.pairs import read_pairs, resolve_images

    pairs_file = tmp_path / "elsewhere.txt"
    shutil.copy(small_pairs / "pairs.txt", pairs_file)
    dst = tmp_path / "mini.bin"
    assert pack.main([str(small_pairs), str(dst), "--pairs", str(pairs_file)]) == 0
    data = load_bin(str(dst))
    pairs, files = resolve_images(read_pairs(str(pairs_file)), str(small_pairs))
    assert list(data.issame) == list(pairs.issame) and len(data) == 10 * 2 * PER_FOLD
    for p in range(len(pairs)):
        for side, key in ((0, pairs.left[p]), (1, pairs.right[p])):
            with open(files[key], "rb") as f:
                assert data.images[2 * p + side] == f.read()
    with open(dst, "rb") as f:  # nothing but bytes and bools: no global in the pickle
        assert not [op for op, *_ in __import__("pickletools").genops(f.read())
                    if "GLOBAL" in op.name]
    assert pack.main([str(small_pairs), str(dst), "--pairs", str(pairs_file)]) == 2  # exists
    broken = tmp_path / "broken"
    shutil.copytree(small_pairs, broken)
    victim = next(broken.glob("*/*.jpg"))
    victim.write_bytes(b"not a jpeg")
    assert pack.main([str(broken), str(tmp_path / "b.bin")]) == 2
    assert not (tmp_path / "b.bin").exists()


def test_named_targets_and_pairs_files_stored_elsewhere(small_pairs, tmp_path):
    from faceignite.verification.targets import plan_targets

    images = tmp_path / "images"
    shutil.copytree(small_pairs, images, ignore=shutil.ignore_patterns("pairs.txt"))
    pairs = tmp_path / "my_pairs.txt"
    shutil.copy(small_pairs / "pairs.txt", pairs)
    (spec,) = plan_targets([f"mine={images}"], val_pairs=[f"mine={pairs}"])
    assert spec.name == "mine" and spec.pairs_file == str(pairs)
    target = spec.load()
    assert target.name == "mine" and len(target.pairs) == 10 * 2 * PER_FOLD
    odd = tmp_path / "a=b"  # an existing path with '=' is a path, not NAME=PATH
    shutil.copytree(small_pairs, odd)
    (spec,) = plan_targets([str(odd)])
    assert spec.path == str(odd) and spec.name == "a_b"
    with pytest.raises(FaceIgniteError, match="--val_pairs other="):
        plan_targets([f"mine={images}"], val_pairs=[f"mine={pairs}", f"other={pairs}"])
    with pytest.raises(FaceIgniteError, match=r"--val_targets .*without pairs\.txt"):
        plan_targets([str(images)])


def test_named_target_in_a_training_run(train_root, small_pairs, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(small_pairs, images, ignore=shutil.ignore_patterns("pairs.txt"))
    shutil.copy(small_pairs / "pairs.txt", tmp_path / "p.txt")
    metrics = train(args(train_root, tmp_path / "runs", "--val_targets", f"mine={images}",
                         "--val_pairs", f"mine={tmp_path / 'p.txt'}"))
    assert 0 <= metrics["mine_accuracy"] <= 1
    assert metrics["mine_val_far1e-3"] is None  # 45 impostor pairs cannot resolve 1e-3


def test_tar_at_an_unresolvable_far_is_na(small_pairs, tmp_path, capsys):
    from faceignite import evaluate
    from faceignite.verification.pairs import read_pairs
    from handlers.tracking import evaluator_scalars

    pairs = read_pairs(str(small_pairs / "pairs.txt"))
    names = list(pairs.keys)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.normal(size=(len(names), 8)).astype(np.float32))
    (tmp_path / "e.txt").write_text("\n".join(names) + "\n")
    evaluate.main(["--embeddings", str(tmp_path / "e.npy"), "--names", str(tmp_path / "e.txt"),
                   "--lfw_pairs", str(small_pairs / "pairs.txt"), "--output_dir",
                   str(tmp_path / "ev")])
    printed = capsys.readouterr().out
    assert re.search(r"TAR @ FAR=1e-3\s+n/a: the 45 impostor pairs .* FAR >= 2\.2e-02", printed)
    (metrics_file,) = (tmp_path / "ev").glob("evaluate-*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["lfw_val_far1e-3"] is None and metrics["lfw_val_far1e-2"] is None
    assert 0 <= metrics["lfw_accuracy"] <= 1
    tracked = evaluator_scalars("lfw", {"accuracy": 0.5, "val_far1e-3": None})
    assert tracked == {"lfw_accuracy": 0.5}  # the trackers leave it out


# --------------------------------------------------------------------------- item 18
def test_training_bar_moves_every_iteration(capsys):
    import torch
    from ignite.engine import Engine

    from handlers import progress

    def step(_engine, _batch):
        time.sleep(0.15)  # past tqdm's 0.1 s between redraws
        return {"loss": torch.tensor(1.0), "batch_size": 2}

    trainer = Engine(step)
    progress.attach(trainer, log_interval=50, progress_bar=True)
    trainer.run(range(4), max_epochs=1)
    err = capsys.readouterr().err
    assert all(f"{i}/4" in err for i in (1, 2, 3)), err
    trainer = Engine(step)
    progress.attach(trainer, log_interval=50)  # stderr is no terminal here: no bar
    trainer.run(range(2), max_epochs=1)
    assert "/2" not in capsys.readouterr().err


def test_validation_shows_a_progress_bar(small_pairs, capsys):
    import torch

    from faceignite.verification.targets import create_target_evaluator, load_target
    from faceignite.models import build_model

    target = load_target(str(small_pairs))
    evaluator = create_target_evaluator(build_model("tiny", 8), target, torch.device("cpu"), 32,
                                        batch_size=16)
    evaluator.progress = True
    evaluator.run()
    err = capsys.readouterr().err
    batches = -(-len(target.sources) // 16)
    shown = re.findall(rf"{target.name}:\s+\d+%\S* *\| *(\d+)/{batches} ", err)
    assert len(set(shown)) >= 2, err  # it moved (tqdm redraws at most every 0.1 s)
    evaluator.progress = None  # not a terminal: none
    evaluator.run()
    assert "batch" not in capsys.readouterr().err


# --------------------------------------------------------------------------- item 19
def test_each_experiments_help_describes_it(capsys, monkeypatch):
    helps = {}
    for name in ("resnet34_triplet", "resnet34_arcface", "iresnet50_center"):
        script = REPO / "experiments" / f"{name}.py"
        monkeypatch.setattr(sys, "argv", [str(script), "-h"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(script), run_name="__main__")
        assert exit_.value.code == 0
        helps[name] = " ".join(capsys.readouterr().out.split())
    assert "resnet34" in helps["resnet34_triplet"] and "triplet loss" in helps["resnet34_triplet"]
    assert "ArcFace" in helps["resnet34_arcface"] and "center loss" not in helps["resnet34_arcface"]
    assert "iresnet50" in helps["iresnet50_center"] and "center loss" in helps["iresnet50_center"]
    assert all("Absolute path" not in text for text in helps.values())


def test_valid_split_that_holds_out_nothing_says_so(train_root, tmp_path, caplog):
    from faceignite.data import DataOptions, build_face_data

    cfg = parse_args(args(train_root, tmp_path, "--valid_split", "0.1"))
    with caplog.at_level(logging.WARNING):
        data = build_face_data(options_group(cfg, DataOptions))
    assert not data.val_indices
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith("--valid_split 0.1 holds out no image at all")
