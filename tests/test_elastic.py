"""Survive a dead worker: real torchrun process groups on CPU (gloo), the tiny network at 32 px.

- a worker SIGKILLed mid-epoch: torchrun ``--max_restarts`` restarts the group, which continues
  from the newest checkpoint (``--resume_path auto``); then pre-emption: SIGUSR1 to one worker of
  the restarted group saves at the next agreement point, exit code 75 in every worker; the same
  command again finishes the run with the uninterrupted run's weights;
- two torchrun node agents on 127.0.0.1 train as the one-node two-process run, and a checkpoint
  written there resumes in one process.

Every kill is timed from the run's own files (the first checkpoint, a ``run.log`` line).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

import zygote
from conftest import REPO, START_METHOD, copy_subset

from faceignite.cli import EXIT_PREEMPTED
from handlers.training import main

K = 2                      # --save_interval: at most K iterations are trained again
EPOCHS, EPOCH_LENGTH = 3, 4  # 16 training images, a global batch of 4
FINAL = EPOCHS * EPOCH_LENGTH
LIMIT_S = 240              # per process group; a hung group fails the test, not the suite

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch has no torch.distributed")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, synthetic_root):
    """4 identities x 6 real JPEGs: 4 train + 2 held out each."""
    return copy_subset(synthetic_root[0], tmp_path_factory.mktemp("elastic"), 4, 6)


def recipe(root: Path, out: Path, *extra: str) -> list[str]:
    """The same command line for every start: ``--resume_path auto`` under ``out``."""
    return ["experiments/resnet34_center.py", "--model", "tiny", "--dataroot", str(root),
            "--image_size", "32", "--batch_size", "4", "--epochs", str(EPOCHS),
            "--valid_split", "0.34", "--num_workers", "0", "--clearml", "off", "--device", "cpu",
            "--log_interval", "1", "--save_interval", str(K), "--n_saved", "3",
            "--output_dir", str(out), "--resume_path", "auto", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STARTED: list[zygote.Popen] = []


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """A failed test leaves no torchrun agent or worker behind (workers run in sessions of their
    own: killing the agent alone would leave them waiting on gloo)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            for pid in workers(proc).values():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def start(*args: str, log: Path) -> zygote.Popen:
    """``python ARGS...`` (forked from the tests' zygote; torchrun's workers are started by
    torchrun itself, from ``sys.executable``)."""
    # torchrun's agent: a rendezvous store of its own per worker group, as the README says
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    with open(log, "ab") as f:
        proc = zygote.Popen(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    STARTED.append(proc)
    return proc


def torchrun(*options: str, log: Path) -> zygote.Popen:
    """``torchrun OPTIONS...``: its agent, ``python -m torch.distributed.run``."""
    return start("-m", "torch.distributed.run", *options, log=log)


def finish(proc: zygote.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit in {LIMIT_S} s:\n{log.read_text()[-4000:]}")


def wait_for(condition, proc: zygote.Popen, log: Path, what: str) -> None:
    """Poll the run's files (every 10 ms) until ``condition()``; fail if the run ended first."""
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} never happened:\n{log.read_text()[-4000:]}")
        time.sleep(0.01)


def run_folder(out: Path) -> Path:
    (folder,) = out.glob("resnet34_center-*")  # one run folder, whichever start made it
    return folder


def logged(out: Path, iteration: int) -> bool:
    """``run.log`` shows iteration ``iteration`` done and the first checkpoint is written."""
    folders = list(out.glob("resnet34_center-*"))
    return bool(folders) and (folders[0] / f"training_checkpoint_{K}.pt").exists() and (
        f" iteration {iteration} |" in (folders[0] / "run.log").read_text())


def continued(out: Path) -> bool:
    """``run.log`` shows a resume and an iteration trained after it."""
    text = (run_folder(out) / "run.log").read_text()
    resumed = resumes(text)
    return bool(resumed) and (
        f" iteration {resumed[-1][0] + 1} |" in text[text.rindex("resuming from"):])


def workers(agent: zygote.Popen) -> dict[int, int]:
    """The worker processes of a torchrun agent: rank -> pid (from /proc)."""
    pids = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{agent.pid}/task").iterdir():
            pids += (task / "children").read_text().split()
    ranks = {}
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(pid)
    return ranks


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())


def resumes(log: str) -> list[tuple[int, str]]:
    """``(iteration, rest of line)`` of each "resuming from" line of ``run.log``."""
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(
        r"resuming from \S+training_checkpoint_\d+\.pt \(epoch \d+ iteration (\d+)\)(.*)", log)]


def last_iteration(log: str) -> int:
    """The last training iteration ``log`` shows."""
    return max(int(i) for i in re.findall(r"epoch \d+ iteration (\d+) \|", log))


def iterations_before(log: str, marker: str) -> int:
    """The last training iteration logged before ``marker``."""
    return last_iteration(log[:log.index(marker)])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    """The uninterrupted one-node, two-process run (``--nproc_per_node 2``, its ranks forked
    from the tests' forkserver): its final checkpoint, which torchrun's runs must end with."""
    out = tmp_path_factory.mktemp("reference")
    main(recipe(data_root, out)[1:] + ["--nproc_per_node", "2", "--backend", "gloo",
                                       "--start_method", START_METHOD])
    final = run_folder(out) / f"training_checkpoint_{FINAL}.pt"
    assert final.exists(), sorted(p.name for p in run_folder(out).iterdir())
    return final


def test_a_killed_worker_restarts_the_group_then_sigusr1_preempts_and_the_requeue_finishes(
        reference, data_root, tmp_path):
    """One cluster run's life, with exactly the uninterrupted run's weights at the end:

    1. a worker SIGKILLed mid-epoch: torchrun (``--max_restarts 1``) restarts the group, which
       continues from the newest checkpoint, at most K iterations back;
    2. SIGUSR1 (SLURM's warning) to one worker of the restarted group: both save at the next
       agreement point and exit 75 (pre-empted, not killed); no restart is left, so torchrun
       ends and reports it;
    3. the same command line again (the requeue) continues from that checkpoint to the end."""
    out, log = tmp_path / "runs", tmp_path / "torchrun.out"
    command = ["--standalone", "--nproc_per_node", "2", "--max_restarts", "1",
               *recipe(data_root, out)]
    proc = torchrun(*command, log=log)
    # 1. after the first checkpoint (iteration K) and one iteration more: mid-interval, mid-epoch
    wait_for(lambda: logged(out, K + 1), proc, log, f"checkpoint {K} and iteration {K + 1}")
    killed = workers(proc)[0]
    os.kill(killed, signal.SIGKILL)  # rank 0: the one that writes
    wait_for(lambda: continued(out), proc, log, "an iteration trained after the restart")
    text = (run_folder(out) / "run.log").read_text()  # the restarted group, in the same folder
    ((resumed_at, note),) = resumes(text)
    assert "after torchrun restart 1 of 1" in note, note
    reached = iterations_before(text, "resuming from")
    assert K <= resumed_at <= reached and reached - resumed_at <= K, (resumed_at, reached)

    # 2. pre-empted: SIGUSR1 to one worker only (a new one: the group was restarted)
    restarted = workers(proc)
    assert killed not in restarted.values()
    logged_before = last_iteration((run_folder(out) / "run.log").read_text())
    os.kill(restarted[1], signal.SIGUSR1)
    assert finish(proc, log) != 0  # torchrun reports its workers' failure
    text = log.read_text()
    failures = text[text.rindex("Failures:"):]  # the last group's report
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", failures, re.S)
    assert root and root.group(1) == str(EXIT_PREEMPTED), failures  # pre-empted, not killed
    # a worker still saving when the first one exits 75 is ended by the agent (SIGTERM, -15)
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", failures)) <= {str(EXIT_PREEMPTED), "-15"}
    match = re.search(r"interrupted by SIGUSR1 at epoch \d+ iteration (\d+): checkpoint saved to "
                      r"(\S+\.pt)", (run_folder(out) / "run.log").read_text())
    assert match, (run_folder(out) / "run.log").read_text()[-4000:]
    stopped = int(match.group(1))
    # the next agreement point after the signal (with --log_interval 1 the end of each
    # iteration, and the end of each epoch, which comes after its last iteration's log line),
    # after the restart and before the end
    assert resumed_at < stopped < FINAL, (resumed_at, stopped)
    assert logged_before < stopped or (
        logged_before == stopped and stopped % EPOCH_LENGTH == 0), (logged_before, stopped)
    assert Path(match.group(2)).name == f"training_checkpoint_{stopped}.pt"

    # 3. the SLURM requeue: the same command line
    again = torchrun(*command, log=log)
    assert finish(again, log) == 0, log.read_text()[-4000:]
    text = (run_folder(out) / "run.log").read_text()
    assert [at for at, _ in resumes(text)] == [resumed_at, stopped]
    assert f"iteration {FINAL} |" in text
    assert max_difference(run_folder(out) / f"training_checkpoint_{FINAL}.pt", reference) == 0.0


def test_two_node_agents_train_as_one_node_and_their_checkpoint_resumes_in_one_process(
        reference, data_root, tmp_path):
    out = tmp_path / "runs"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [torchrun("--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                      "--rdzv_endpoint", endpoint, "--rdzv_id", "issue31",
                      *recipe(data_root, out), log=tmp_path / f"node{i}.out") for i in range(2)]
    for i, node in enumerate(nodes):
        assert finish(node, tmp_path / f"node{i}.out") == 0, (
            tmp_path / f"node{i}.out").read_text()[-4000:]
    folder = run_folder(out)
    assert "2 processes (gloo, 2 node(s))" in (folder / "run.log").read_text()
    assert max_difference(folder / f"training_checkpoint_{FINAL}.pt", reference) <= 1e-6

    # its mid-run checkpoint, continued by one plain process (no torchrun)
    mid = FINAL - K
    single = tmp_path / "single"
    single.mkdir()
    (single / f"training_checkpoint_{mid}.pt").write_bytes(
        (folder / f"training_checkpoint_{mid}.pt").read_bytes())
    log = tmp_path / "single.out"
    proc = start(*recipe(data_root, single), log=log)
    assert finish(proc, log) == 0, log.read_text()[-4000:]
    text = (single / "run.log").read_text()
    assert [at for at, _ in resumes(text)] == [mid] and f"iteration {FINAL} |" in text
    assert (single / f"training_checkpoint_{FINAL}.pt").exists()


def test_preemption_signals_exit_75_and_ctrl_c_130():
    from handlers.interrupt import COMMAND_LINE_SIGNALS, exit_code_of

    assert {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1} <= set(COMMAND_LINE_SIGNALS)
    assert exit_code_of(signal.SIGTERM) == exit_code_of(signal.SIGUSR1) == EXIT_PREEMPTED == 75
    assert exit_code_of(signal.SIGINT) == 130 and exit_code_of(signal.SIGHUP) == 128 + 1
    assert EXIT_PREEMPTED not in (0, 2, 3)


def test_a_restartable_group_on_a_shared_rendezvous_store_is_warned(monkeypatch):
    from faceignite.run import shared_store_warning

    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.delenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", raising=False)
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in shared_store_warning()
    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    assert shared_store_warning() is None
    monkeypatch.delenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # nothing restarts: nothing to warn
    assert shared_store_warning() is None
