"""Issue 30 items 1-4 and 12: no work lost, no data leaked. Real files (a packed .rec, .bin
sets written by pickle, JPEG folders), real runs of the tiny model, real second processes."""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zygote
from conftest import REPO, START_METHOD, copy_subset, one_error, shared_path
from faceignite.cli import EXIT_PREEMPTED
from faceignite.data.pack import main as pack_main
from faceignite.errors import FaceIgniteError
from faceignite.run_lock import LOCK_NAME, lock_run_folder
from handlers.training import main

PYTHON = sys.executable


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


def test_a_record_that_fails_to_read_mid_epoch_is_skipped_and_counted(tmp_path):
    """The .rec passed its check at start, then lost its second half (a file cut on a network
    file system): the records there are skipped and counted like undecodable images, the run
    ends with its checkpoint."""
    from ignite.engine import Events

    dst = packed(tmp_path)
    rec = dst / "train.rec"

    def cut_after_the_first_batch(trainer, _state):
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1),
                                  lambda _: os.truncate(rec, rec.stat().st_size // 2))

    metrics = main(args(dst, tmp_path / "runs", "--seed", "3"),
                   hooks=[cut_after_the_first_batch], handle_signals=False)
    assert metrics["skipped_images"] > 0  # 12 images, the second half of the file gone
    assert checkpoints(tmp_path / "runs")


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
    from faceignite.verification.bin_set import load_bin

    root = faces(tmp_path / "data")
    target = bin_set(tmp_path / "ok.bin", root, issame=[1, 0] * 10)
    assert load_bin(str(target)).issame.tolist() == [True, False] * 10


# ------------------------------------------------ item 3: one writer per run folder
def start_run(argv: list[str], log: Path) -> zygote.Popen:
    """A real training process of this checkout (``experiments/resnet34_center.py``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_OFFLINE_MODE": "1"}
    with open(log, "w") as f:
        return zygote.Popen([PYTHON, str(REPO / "experiments" / "resnet34_center.py"),
                            *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_for(found, timeout: float = 120.0, proc: zygote.Popen | None = None):
    """Poll ``found()`` (the run's own files) until it gives something."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = found()
        if value:
            return value
        assert proc is None or proc.poll() is None, "the run ended early"
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_second_writer_of_a_live_run_folder_is_refused_naming_it(tmp_path):
    root = faces(tmp_path / "data")
    out = tmp_path / "runs"
    first = start_run(args(root, out, "--epochs", "100000"), tmp_path / "first.log")
    try:
        ckpt = wait_for(lambda: checkpoints(out), proc=first)[0]  # it trains and saves
        run_dir = ckpt.parent
        lock = json.loads((run_dir / LOCK_NAME).read_text())
        assert (lock["pid"], lock["host"]) == (first.pid, socket.gethostname())
        config, log = (run_dir / "config.json").read_text(), (run_dir / "run.log").read_text()
        second = zygote.run(
            [PYTHON, str(REPO / "experiments" / "resnet34_center.py"),
             *args(root, out, "--epochs", "100000", "--resume_path", str(run_dir))],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        (line,) = [x for x in second.stderr.splitlines() if "error:" in x]
        assert str(run_dir) in line and f"pid {first.pid} on host {socket.gethostname()}" in line
        assert (run_dir / "config.json").read_text() == config  # the live run's, untouched
        assert (run_dir / "run.log").read_text().startswith(log)
        assert "output in" not in (run_dir / "run.log").read_text()[len(log):]
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == EXIT_PREEMPTED  # the live run checkpointed and stopped
    assert not (run_dir / LOCK_NAME).exists()  # released on exit


def write_lock(run_dir: Path, pid: int, host: str, age: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host,
                                                 "heartbeat": time.time() - age}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_whose_pid_is_gone_on_this_host_is_taken_over(tmp_path, caplog):
    write_lock(tmp_path, dead_pid(), socket.gethostname(), age=1)
    with caplog.at_level(logging.WARNING):
        lock = lock_run_folder(str(tmp_path))
    assert "stale" in caplog.text and "is gone" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_node_is_refused_until_its_heartbeat_is_old(tmp_path):
    write_lock(tmp_path, 4242, "node-17", age=30)  # a live run elsewhere: pid unknowable here
    with pytest.raises(FaceIgniteError) as exc:
        lock_run_folder(str(tmp_path), "--resume_path")
    assert "pid 4242 on host node-17" in str(exc.value) and "--resume_path" in str(exc.value)
    write_lock(tmp_path, 4242, "node-17", age=600)  # requeued: the old node's run is dead
    lock = lock_run_folder(str(tmp_path))
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == socket.gethostname()
    lock.release()


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(tmp_path):
    lock = lock_run_folder(str(tmp_path), heartbeat_s=0.1)
    first = json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
    later = wait_for(lambda: json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"]
                     > first, timeout=10)
    assert later
    lock.release()


# ------------------------------------------------ item 4: ClearML stores no diff, no environment
SECRET, ENV_SECRET = "sk-live-4c6f0ff1ce5ecret", "env-secret-77aa91"


def git_repo_with_a_secret(repo: Path) -> Path:
    """A git repository holding the training script, and an uncommitted edit with a secret."""
    repo.mkdir()
    (repo / "train.py").write_text((REPO / "experiments" / "resnet34_center.py").read_text())
    (repo / "settings.py").write_text("API_TOKEN = 'fill me in'\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "start"], check=True)
    (repo / "settings.py").write_text(f"API_TOKEN = '{SECRET}'\n")  # not committed
    return repo


def files_holding(folder: Path, *secrets: str) -> list[str]:
    """Every file under ``folder`` (zip members too) in which one of ``secrets`` occurs."""
    import zipfile

    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = [(str(path), path.read_bytes())]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                data += [(f"{path}:{n}", zf.read(n)) for n in zf.namelist()]
        found += [name for name, blob in data for s in secrets if s.encode() in blob]
    return found


def clearml_run(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """A real run of a script inside a git repo with an uncommitted secret, tracked offline;
    (run folder, ClearML cache folder)."""
    root = faces(tmp_path / "data", 2, 3)
    repo = git_repo_with_a_secret(tmp_path / "repo")
    cache = tmp_path / "clearml-cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_CACHE_DIR": str(cache),
           "CLEARML_LOG_ENVIRONMENT": "*", "FACEIGNITE_TEST_SECRET": ENV_SECRET}
    env.pop("CLEARML_OFFLINE_MODE", None)
    argv = [a for a in args(root, tmp_path / "runs", *extra) if a not in ("--clearml", "off")]
    done = zygote.run([PYTHON, "train.py", *argv, "--clearml", "offline"], cwd=repo, env=env,
                      capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and p.name != "cache"]
    assert list(run_dir.glob("clearml/offline/*.zip")), done.stderr[-3000:]
    return run_dir, cache


def test_clearml_stores_no_uncommitted_diff_and_no_environment(tmp_path):
    run_dir, cache = clearml_run(tmp_path)
    assert files_holding(run_dir, SECRET, ENV_SECRET) == []
    assert files_holding(cache, SECRET, ENV_SECRET) == [] if cache.exists() else True


def test_clearml_store_diff_stores_the_diff_when_asked(tmp_path):
    run_dir, _ = clearml_run(tmp_path, "--clearml_store_diff")
    assert files_holding(run_dir, SECRET)  # the diff: so the test above can fail
    assert files_holding(run_dir, ENV_SECRET) == []  # never the environment


# ------------------------------------------------ item 12: a signal during a long validation
def slow_bin(path: Path, pairs: int = 1000) -> Path:
    """``pairs`` pairs of real 32-px JPEG faces: at --lfw_batch_size 1 with flip TTA its
    validation takes minutes on a 2-core CPU (87 s measured without flip)."""
    import cv2

    files = sorted(shared_path("celeba_subset", "aligned-160").rglob("*.jpg"))[:8]
    images = [cv2.imencode(".jpg", cv2.resize(cv2.imread(str(f)), (32, 32)))[1].tobytes()
              for f in files]
    data = [images[(i * 5 + j) % 8] for i in range(pairs) for j in (0, 1)]
    path.write_bytes(pickle.dumps((data, [i % 2 == 0 for i in range(pairs)]), protocol=2))
    return path


def test_sigterm_during_a_long_validation_checkpoints_within_seconds(tmp_path):
    root = faces(tmp_path / "data")
    out = tmp_path / "runs"
    argv = args(root, out, "--epochs", "2", "--valid_split", "0.34", "--val_targets",
                str(slow_bin(tmp_path / "slow.bin")), "--lfw_batch_size", "1", "--lfw_flip")
    run = start_run(argv, tmp_path / "run.out")
    try:
        log = wait_for(lambda: next(out.glob("*/run.log"), None), proc=run)
        # the held-out line is logged, then the long verification of epoch 1 starts
        wait_for(lambda: "held-out  epoch 1" in log.read_text(), proc=run)
        assert not checkpoints(out)
        signalled = time.time()
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == EXIT_PREEMPTED, (tmp_path / "run.out").read_text()[-2000:]
    (ckpt,) = checkpoints(out)
    assert ckpt.stat().st_mtime - signalled < 5.0  # not after the whole validation
    text = log.read_text()
    assert "slow validation stopped at batch" in text and "result is discarded" in text
    assert "slow  epoch 1" not in text  # no metrics from a validation cut short
    assert f"checkpoint saved to {ckpt}" in text


def validation_signal_worker(local_rank: int, out_dir: str) -> None:
    """Each of 2 processes: a trainer whose epoch end runs a validation of 100 (rank 0) or 97
    (rank 1) batches; rank 1 alone receives SIGTERM at validation batch 3."""
    import ignite.distributed as idist
    import torch
    from ignite.engine import Engine, Events

    from handlers import interrupt

    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    saved, seen = [], []
    stop = interrupt.attach(trainer, lambda e: saved.append(e.state.iteration) or "ckpt.pt")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED,
                                lambda e: seen.append(e.state.iteration))
    stop.guard(evaluator, every=10)

    @evaluator.on(Events.ITERATION_COMPLETED(once=3))
    def _signal(_) -> None:
        if idist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    batches = 100 if idist.get_rank() == 0 else 97
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(range(batches)))
    code = 0
    try:
        trainer.run(range(4), max_epochs=2)
    except interrupt.TrainingInterrupted as exc:
        code = exc.exit_code
    torch.save({"validated": seen[-1], "saved": saved, "code": code},
               os.path.join(out_dir, f"rank{idist.get_rank()}.pt"))


def test_a_signal_to_one_process_stops_every_validation_at_its_agreement_point(tmp_path):
    import ignite.distributed as idist
    import torch

    from faceignite.run import _free_port

    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port(),
                        start_method=START_METHOD) as parallel:
        parallel.run(validation_signal_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # both stop at batch 10 (not 97/100), save the trainer's iteration 4, exit 75 (pre-empted)
    assert ranks == [{"validated": 10, "saved": [4], "code": EXIT_PREEMPTED}] * 2
