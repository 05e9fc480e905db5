"""Distributed training through ignite.distributed: 2 gloo processes on the CPU, real JPEGs."""
from __future__ import annotations

import math
import os
import signal
import socket
import sys

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

import zygote
from conftest import REPO, START_METHOD, copy_subset, one_error

from handlers.training import main

from faceignite.checkpoint import unwrap  # noqa: E402
from faceignite.cli import EXIT_PREEMPTED  # noqa: E402
from faceignite.config import options_group, parse_args  # noqa: E402
from faceignite.data import DataOptions, build_face_data  # noqa: E402
from faceignite.engine import TrainerEvents  # noqa: E402
from faceignite.verification import create_pairs_evaluator  # noqa: E402
from faceignite.verification.evaluator import PairVerification  # noqa: E402
from faceignite.verification.pairs import read_pairs, resolve_images  # noqa: E402
from handlers import control, interrupt  # noqa: E402

LFW_KEYS = ("accuracy", "accuracy_std", "threshold", "val_far1e-3", "val_far1e-2", "auc", "eer")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, synthetic_root):
    """4 identities x 4 real JPEGs: 3 train + 1 held out each (12 + 4 images)."""
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path_factory.mktemp("small"), identities=4, images=4)
    return root


@pytest.mark.parametrize("processes,batch_size", [(2, 32), (3, 30)])
def test_processes_share_out_the_single_process_batches(synthetic_root, tmp_path, processes,
                                                        batch_size):
    """Step k of N processes loads together the images (and augmentation seeds) of step k of
    one process; epochs have as many steps; a mid-epoch resume skips the same steps."""
    train, _ = synthetic_root
    cfg = parse_args(["--dataroot", str(train), "--output_dir", str(tmp_path), "--batch_size",
                      str(batch_size), "--num_workers", "0", "--device", "cpu"])

    def batches(num_replicas: int, rank: int, skip_steps: int = 0) -> list[list]:
        loader = build_face_data(options_group(cfg, DataOptions), num_replicas=num_replicas, rank=rank).train_loader
        loader.sampler.set_epoch(1, skip=skip_steps * loader.batch_size)
        assert loader.batch_size == batch_size // num_replicas
        return list(loader.batch_sampler)  # the (index, seed) keys of each step

    for skip in (0, 5):
        single = batches(1, 0, skip)
        shards = [batches(processes, r, skip) for r in range(processes)]
        assert all(len(s) == len(single) for s in shards) and len(single) > 5
        for k, keys in enumerate(single):
            assert sorted(key for s in shards for key in s[k]) == sorted(keys), (skip, k)


def run_args(root, output_dir, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(output_dir), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "4", "--epochs", "1", "--valid_split", "0.25", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--n_saved", "1", "--log_interval", "0",
            *extra]


def save_states(trainer, state) -> None:
    """A recipe hook (runs in each process): at the end, write this process's training state."""
    centres = unwrap(state.criterion).center_loss.centers

    @trainer.on(Events.STARTED)
    def _initial(_) -> None:
        state.centres_at_start = centres.detach().clone()

    @trainer.on(Events.COMPLETED)
    def _save(engine) -> None:
        path = os.path.join(state.config["output_dir"], f"states-rank{idist.get_rank()}.pt")
        torch.save({"world_size": idist.get_world_size(),
                    "iteration": engine.state.iteration,
                    "model": unwrap(state.model).state_dict(),
                    "criterion": unwrap(state.criterion).state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
                    "centres_at_start": state.centres_at_start,
                    "metrics": {k: float(v) for k, v in engine.state.metrics.items()
                                if k.startswith(("train_", "val_"))}}, path)


def assert_equal_tree(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs between the processes"
    else:
        assert a == b, where


def test_two_processes_train_identical_replicas_and_resume_in_one(small_root, tmp_path):
    out = tmp_path / "runs"
    assert main(run_args(small_root, out, "--nproc_per_node", "2", "--backend", "gloo",
                         "--start_method", START_METHOD),
                hooks=[save_states]) == {}  # ranks elsewhere: the metrics are in the run folder
    rank0, rank1 = (torch.load(out / f"states-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # 12 images, batch 4 in all = 2 per process: 3 iterations, as with one process
    assert rank0["iteration"] == rank1["iteration"] == 3
    assert_equal_tree(rank0["model"], rank1["model"], "model")  # weights and BatchNorm buffers
    assert_equal_tree(rank0["criterion"], rank1["criterion"], "criterion")  # centres, classifier
    assert_equal_tree(rank0["optimizers"], rank1["optimizers"], "optimizers")
    # epoch means over both processes' images, held-out accuracy over both shards
    assert rank0["metrics"] == rank1["metrics"] and "train_loss" in rank0["metrics"]
    # the centres did train (not merely stay at their equally seeded initial values)
    assert not torch.equal(rank0["centres_at_start"], rank0["criterion"]["center_loss.centers"])

    # rank 0 wrote one checkpoint: the plain modules' keys, the batch of both processes
    run_dir = next(out.glob("resnet34_center-*"))
    (ckpt_path,) = run_dir.glob("training_checkpoint_3.pt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["batch_size_training"] == 4
    assert_equal_tree(ckpt["model_state_dict"], rank0["model"], "checkpoint")
    assert_equal_tree(ckpt["criterion_state_dict"], rank0["criterion"], "checkpoint")
    log = (run_dir / "run.log").read_text()
    assert "2 processes (gloo" in log and "[rank 1]" not in log  # rank 0 logs the run

    # the start method is not part of the run: the same command, its ranks forked from the
    # launcher (a command line, as users start it), trains the same weights
    forked = tmp_path / "forked"
    done = zygote.run([sys.executable, "experiments/resnet34_center.py",
                       *run_args(small_root, forked, "--nproc_per_node", "2", "--backend", "gloo",
                                 "--start_method", "fork")],
                      cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (same,) = forked.glob("resnet34_center-*/training_checkpoint_3.pt")
    assert_equal_tree(torch.load(same, weights_only=True)["model_state_dict"],
                      ckpt["model_state_dict"], "--start_method fork")

    # ... and one process goes on from it for a second epoch
    metrics = main(run_args(small_root, tmp_path / "unused", "--epochs", "2",
                            "--resume_path", str(ckpt_path)))
    assert math.isfinite(metrics["train_loss"]) and "val_accuracy" in metrics
    resumed = torch.load(run_dir / "training_checkpoint_6.pt", weights_only=True)
    assert resumed["world_size"] == 1 and resumed["trainer_state_dict"]["iteration"] == 6
    assert resumed["trainer_state_dict"]["epoch_length"] == 3


# --------------------------------------------------------------------------- 2-process checks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_embeddings(n: int) -> torch.Tensor:
    """The same (unnormalised) embeddings of ``n`` images in every process."""
    return torch.from_numpy(np.random.default_rng(7).normal(size=(n, 16))).float()


def verify_shards(pairs_dir: str, rows_of_rank: list[list[int]] | None) -> dict:
    """Run :class:`PairVerification` on this process's rows of the fixed embeddings."""
    pairs, paths = resolve_images(read_pairs(os.path.join(pairs_dir, "pairs.txt")), pairs_dir)
    embeddings = fixed_embeddings(len(paths))
    rows = (rows_of_rank[idist.get_rank()] if rows_of_rank is not None
            else list(range(len(paths))))
    metric = PairVerification(pairs, paths)
    metric.reset()
    for start in range(0, len(rows), 50):  # a few batches, as the engine would give them
        chunk = torch.tensor(rows[start:start + 50], dtype=torch.long)
        metric.update((embeddings[chunk], chunk))
    return metric.compute().metrics("lfw")


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(128, 16))


def evaluate_images(pairs_dir: str, weights: str) -> dict:
    """The LFW evaluator on real JPEGs, with fixed model weights (sharded when distributed)."""
    model = small_cnn()
    model.load_state_dict(torch.load(weights, weights_only=True))
    evaluator = create_pairs_evaluator(model, pairs_dir, "cpu", 32, batch_size=40)
    return evaluator.run().metrics("lfw")


def nan_in_rank1_stops_both() -> dict:
    """Rank 1's loss goes NaN at iteration 3; rank 0's never does."""
    def step(engine, _batch):
        bad = idist.get_rank() == 1 and engine.state.iteration == 3
        return {"loss": torch.tensor(float("nan") if bad else 1.0)}

    trainer = Engine(step)
    with control.RunControl(trainer):  # the recipe's NaN guard and stop agreement
        pass
    nan_events = []
    trainer.add_event_handler(TrainerEvents.NAN_DETECTED, lambda e: nan_events.append(1))
    trainer.run(range(10), max_epochs=1)
    return {"iteration": trainer.state.iteration, "nan_detected": len(nan_events) == 1}


def signal_to_rank1_stops_both() -> dict:
    """Rank 1 alone receives SIGTERM at iteration 2; checks every 4 iterations."""
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})
    saved = []
    interrupt.attach(trainer, lambda e: saved.append(e.state.iteration) or "ckpt.pt",
                     sync_every=4)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def _signal(_) -> None:
        if idist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        trainer.run(range(10), max_epochs=1)
    except interrupt.TrainingInterrupted as exc:
        return {"stopped_at": trainer.state.iteration, "saved": saved, "exit_code": exc.exit_code}
    return {"stopped_at": None, "saved": saved, "exit_code": 0}


class RecordingSaver:
    """Stands in for the checkpointer: records the iterations it was asked to save."""

    last_checkpoint = best_checkpoint = None

    def __init__(self) -> None:
        self.saved: list[int] = []

    def save_now(self, engine: Engine) -> str:
        self.saved.append(engine.state.iteration)
        return "ckpt.pt"

    def summary(self, _metrics=None) -> str:
        return ""


def agreement_every_4() -> dict:
    """The recipe's batched agreement (points every 4 iterations): rank 1's loss goes NaN at
    iteration 2, rank 0 receives SIGTERM at iteration 6 (after the NaN run: a second trainer);
    all reads happen at iterations 4 and 8 only."""
    results = {}
    for case in ("nan", "signal"):
        def step(engine, _batch, case=case):
            bad = case == "nan" and idist.get_rank() == 1 and engine.state.iteration == 2
            return {"loss": torch.tensor(float("nan") if bad else 1.0)}

        trainer = Engine(step)
        saver, nan_events = RecordingSaver(), []
        with control.RunControl(trainer, every=(4,),
                                signals=interrupt.COMMAND_LINE_SIGNALS) as run_control:
            run_control.save_with(saver)
        saved = saver.saved
        trainer.add_event_handler(TrainerEvents.NAN_DETECTED, lambda e: nan_events.append(1))

        @trainer.on(Events.ITERATION_COMPLETED(once=6))
        def _signal(_, case=case) -> None:
            if case == "signal" and idist.get_rank() == 0:
                os.kill(os.getpid(), signal.SIGTERM)

        code = 0
        try:
            trainer.run(range(10), max_epochs=1)
        except interrupt.TrainingInterrupted as exc:
            code = exc.exit_code
        results[case] = {"stopped_at": trainer.state.iteration, "nan": len(nan_events),
                         "saved": saved, "exit_code": code}
    return results


def checks_worker(local_rank: int, pairs_dir: str, weights: str, out_dir: str) -> None:
    n = len(resolve_images(read_pairs(os.path.join(pairs_dir, "pairs.txt")), pairs_dir)[1])
    results = {
        "strided": verify_shards(pairs_dir, [list(range(0, n, 2)), list(range(1, n, 2))]),
        # uneven shards, one empty, and an image embedded by both processes
        "uneven": verify_shards(pairs_dir, [list(range(n)), [n - 1]]),
        "empty": verify_shards(pairs_dir, [[], list(range(n))]),
        "images": evaluate_images(pairs_dir, weights),
        "nan": nan_in_rank1_stops_both(),
        "signal": signal_to_rank1_stops_both(),
        "every_4": agreement_every_4(),
    }
    torch.save(results, os.path.join(out_dir, f"checks-rank{idist.get_rank()}.pt"))


@pytest.fixture(scope="module")
def two_process_checks(synthetic_root, tmp_path_factory):
    """One launch of 2 gloo processes (``idist.Parallel``) running :func:`checks_worker`;
    returns the single-process LFW results and each process's results."""
    _, pairs_dir = synthetic_root
    out = tmp_path_factory.mktemp("checks")
    torch.manual_seed(0)
    weights = str(out / "model.pt")
    torch.save(small_cnn().state_dict(), weights)
    single = {"fixed": verify_shards(str(pairs_dir), None),
              "images": evaluate_images(str(pairs_dir), weights)}
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port(),
                        start_method=START_METHOD) as parallel:
        parallel.run(checks_worker, str(pairs_dir), weights, str(out))
    ranks = [torch.load(out / f"checks-rank{r}.pt", weights_only=True) for r in (0, 1)]
    return single, ranks


def test_sharded_lfw_metrics_equal_single_process(two_process_checks):
    single, ranks = two_process_checks
    for rank, sharded in enumerate(ranks):
        for case in ("strided", "uneven", "empty"):  # the same embeddings: the same numbers
            assert {k: sharded[case][f"lfw_{k}"] for k in LFW_KEYS} == \
                   {k: single["fixed"][f"lfw_{k}"] for k in LFW_KEYS}, (rank, case)
        for k in LFW_KEYS:  # embedded by two processes in other batches: float rounding only
            want = single["images"][f"lfw_{k}"]  # None: a TAR its impostor pairs cannot resolve
            assert sharded["images"][f"lfw_{k}"] == (
                want if want is None else pytest.approx(want, rel=1e-4, abs=1e-4)), (rank, k)
    assert 0.3 < single["fixed"]["lfw_accuracy"] < 0.7  # random embeddings: near chance


def test_a_nan_in_one_process_stops_both_at_that_iteration(two_process_checks):
    _, ranks = two_process_checks
    assert [r["nan"] for r in ranks] == [{"iteration": 3, "nan_detected": True}] * 2


def test_a_signal_to_one_process_stops_both_after_saving(two_process_checks):
    _, ranks = two_process_checks
    expected = {"stopped_at": 4, "saved": [4], "exit_code": EXIT_PREEMPTED}
    assert [r["signal"] for r in ranks] == [expected] * 2


def test_batched_agreement_stops_both_at_the_next_point(two_process_checks):
    _, ranks = two_process_checks
    expected = {"nan": {"stopped_at": 4, "nan": 1, "saved": [], "exit_code": 0},
                "signal": {"stopped_at": 8, "nan": 0, "saved": [8],
                           "exit_code": EXIT_PREEMPTED}}
    assert [r["every_4"] for r in ranks] == [expected] * 2


def test_auto_backend_for_torchrun_srun_nproc_and_plain_runs(monkeypatch):
    from faceignite.run import resolve_backend

    for var in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_backend("auto", 1, "cpu") is None  # one plain process
    assert resolve_backend("auto", 2, "cpu") == "gloo"  # --nproc_per_node 2 on a laptop
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun with one task: one plain process
    assert resolve_backend("auto", 1, "cpu") is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")  # one task of a 16-task srun step
    assert resolve_backend("auto", 1, "cpu") == "gloo"
    assert resolve_backend("none", 1, "cpu") is None
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun
    assert resolve_backend("auto", 1, "cpu") == "gloo"


def test_start_method_fork_is_refused_for_cuda_runs_and_where_the_platform_lacks_it(
        small_root, tmp_path, caplog, monkeypatch):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exited:  # refused before anything is started or written
        main(run_args(small_root, out, "--nproc_per_node", "2", "--device", "cuda",
                      "--start_method", "fork"))
    assert exited.value.code == 2 and "--start_method fork" in one_error(caplog)
    assert not out.exists()
    caplog.clear()
    monkeypatch.setattr("multiprocessing.get_all_start_methods", lambda: ["spawn"])  # Windows
    with pytest.raises(SystemExit) as exited:
        main(run_args(small_root, out, "--nproc_per_node", "2", "--start_method", "forkserver"))
    assert exited.value.code == 2 and "--start_method forkserver" in one_error(caplog)
    assert not out.exists()


def _signals_of_a_forked_child() -> list[str]:
    """SIGTERM's and SIGUSR1's handlers in a child forked now (its report through a pipe)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        names = [str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGUSR1)]
        os.write(write, ",".join(names).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        report = f.read()
    os.waitpid(pid, 0)
    return report.split(",")


def test_a_rank_forked_by_a_forwarding_launcher_starts_with_the_default_signals():
    """``--start_method fork``: the launcher forwards SIGTERM/SIGUSR1 to its ranks; a rank
    forked meanwhile starts with the default handlers (as a spawned one), not the launcher's."""
    from faceignite.run import _forward_preemption

    default = str(signal.SIG_DFL)
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]
    with _forward_preemption():
        assert callable(signal.getsignal(signal.SIGTERM))  # the launcher forwards
        assert _signals_of_a_forked_child() == [default, default]
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)] == before
    signal.signal(signal.SIGUSR1, forward_nothing := lambda *_: None)  # outside: inherited
    try:
        assert _signals_of_a_forked_child()[1] == str(forward_nothing)
    finally:
        signal.signal(signal.SIGUSR1, before[1])
