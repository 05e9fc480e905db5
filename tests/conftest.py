"""Shared fixtures: real JPEG folders in temp dirs, the shared real-face data (skipped when absent),
the one-error-line check and a criterion that turns NaN.

Tiers: ``pytest -m "not slow"`` is the edit loop; ``slow`` is only for tests that must train a
real backbone on real faces.  Every other test trains ``--model tiny`` at 32 px (``train_args``).
One BLAS/OpenMP thread per process (this one and every process it starts): the test networks
are too small to gain from a second thread, and on a busy machine two threads that spin-wait
for each other made a step 20x slower."""
from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

import zygote

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("CLEARML_OFFLINE_MODE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; subprocesses inherit it
# Two-process tests whose subject is what the ranks do (``idist.Parallel(start_method=...)``,
# ``--start_method``) fork their ranks from one server process per test process that imported
# torch, ignite and the trainer once ("forkserver"), rather than start each rank from nothing
# ("spawn": 3-4 CPU-s of imports per rank); so do the tests' command lines (``zygote``).  The
# ranks get the server's environment, not the test's.
START_METHOD = "forkserver"
multiprocessing.set_forkserver_preload(list(zygote.PRELOAD))
SHARED_DATA = Path(os.environ.get("FACEIGNITE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _names_test_files(args: list[str]) -> bool:
    """Whether the command line names test files or test ids (an edit-loop run of a few tests)."""
    return any(Path(arg.split("::")[0]).is_file() for arg in args)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """With pytest-xdist installed, a run of a folder (``pytest``, ``pytest -m "not slow"``,
    ``bash test.sh``) uses one worker process per core (``-n auto``) unless ``-n`` is given; a
    run naming test files stays in this process (starting workers costs more than it saves
    there).  ``-n 0`` or ``-p no:xdist`` turn it off.  With ``--cov``, pass ``-n auto`` yourself:
    pytest-cov chooses its mode before this hook runs."""
    if not config.pluginmanager.hasplugin("xdist") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if (config.option.numprocesses is None and not config.option.collectonly
            and not config.option.usepdb and not _names_test_files(config.args)
            and not getattr(config.option, "cov_source", None)):  # pytest-cov: give -n yourself
        config.option.numprocesses = "auto"
    if config.option.numprocesses and config.option.dist == "no":
        # one test file per unit of work: a module's fixtures (a trained checkpoint, two spawned
        # processes) are built once, on one worker (xdist 3.8's loadgroup fails on pytest 9.2),
        # handed out in the order of pytest_collection_modifyitems
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may be absent
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: the cores this process may run on (not every core of the machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# the fast tier's longest test files, longest first (their durations in the fast tier on 2 idle
# cores: 29, 19, 13, 9, 8, 7, 6, 5, 5 and 4 s; BENCHMARKS.md, "Test suite: tiers")
LONG_FILES = ("test_elastic.py", "test_custom_example.py", "test_face_backbones.py",
              "test_field_weights.py", "test_evaluate_any_model.py", "test_new_user.py",
              "test_second_system.py", "test_nothing_lost.py", "test_clearml.py",
              "test_reliability_runs.py")


@pytest.hookimpl(trylast=True)  # after ``-m``/``-k`` deselected what will not run
def pytest_collection_modifyitems(config, items):
    """In an xdist worker, the test files that hold selected ``slow`` tests first (real
    backbones on real faces: minutes), then the long ones of the fast tier.  With ``--dist
    loadfile`` each file is one unit of work, handed out in this order (``loadscopereorder``
    is off: xdist would order files by their number of tests); the longest first makes the
    shortest schedule, the short ones filling in at the end."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow = {item.path for item in items if item.get_closest_marker("slow")}

        def rank(item) -> int:
            if item.path in slow:
                return 0
            name = item.path.name
            return 1 + LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES) + 1

        items.sort(key=rank)  # stable: a file's own order is kept


def installed(*modules: str) -> bool:
    """Whether ``modules`` can be imported, without importing them (a test module's skip marker:
    collecting it in a worker that runs none of its tests costs nothing)."""
    return all(importlib.util.find_spec(name) is not None for name in modules)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real face data not found at {path} (set FACEIGNITE_SHARED_DATA)")
    return path


def copy_subset(source: Path, dest: Path, identities: int, images: int) -> Path:
    """Copy the first ``images`` JPEGs of the first ``identities`` folders of ``source``."""
    for ident in sorted(os.listdir(source))[:identities]:
        (dest / ident).mkdir(parents=True)
        for name in sorted(os.listdir(source / ident))[:images]:
            shutil.copy(source / ident / name, dest / ident / name)
    return dest


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """This process's torch intra-op threads: ``OMP_NUM_THREADS`` (1 unless set)."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> tuple[Path, Path]:
    """The built-in generated dataset (real JPEG files): (train root, LFW-style pairs root)."""
    from faceignite.data.builtin import ensure_builtin_dataset

    train, pairs = ensure_builtin_dataset(str(tmp_path_factory.mktemp("builtin")))
    return Path(train), Path(pairs)


def fold_pairs(pairs_txt: Path, keep: int, folds: int = 10, skip: int = 0) -> list[str]:
    """Lines of an LFW ``pairs.txt`` (header ``FOLDS<TAB>PER_FOLD``, then each fold's same
    pairs and its different ones): of each of the first ``folds`` folds, ``keep`` same then
    ``keep`` different pairs, after the first ``skip`` of each kind."""
    lines = Path(pairs_txt).read_text().splitlines()
    per_fold = int(lines[0].split()[1])
    chosen = []
    for fold in range(folds):
        block = lines[1 + fold * 2 * per_fold:1 + (fold + 1) * 2 * per_fold]
        chosen += (block[skip:skip + keep]
                   + block[per_fold + skip:per_fold + skip + keep])
    return chosen


def lfw_subset(tmp_path: Path, per_fold: int = 10, folds: int = 2) -> tuple[str, str]:
    """Real LFW crops and a pairs file of the first ``per_fold`` same and different pairs of
    LFW's first ``folds`` folds: (images folder, pairs file).  Skips without ../shared/data."""
    kept = fold_pairs(shared_path("lfw", "pairs.txt"), per_fold, folds)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{folds}\t{per_fold}\n" + "\n".join(kept) + "\n")
    return str(shared_path("lfw", "lfw-mtcnn-160")), str(pairs)


def evaluate_on(tmp_path: Path, lfw: tuple[str, str], *source: str):
    """``python -m faceignite.evaluate SOURCE...`` on an :func:`lfw_subset` (CPU, results under
    ``tmp_path/out``): its LFW result."""
    from faceignite.evaluate import main as evaluate

    return evaluate([*source, "--lfw", lfw[0], "--lfw_pairs", lfw[1], "--device", "cpu",
                     "--output_dir", str(tmp_path / "out"), "--lfw_batch_size", "16"])


def pair_files(line: str) -> tuple[list[tuple[str, str]], bool]:
    """``[(person, file name)] * 2`` and same-or-not of one ``pairs.txt`` line."""
    t = line.split()
    people = [(t[0], t[1]), (t[0], t[2])] if len(t) == 3 else [(t[0], t[1]), (t[2], t[3])]
    return [(p, f"{p}_{int(n):04d}.jpg") for p, n in people], len(t) == 3


SMALL_PAIRS_PER_FOLD = 5


@pytest.fixture(scope="session")
def small_pairs(synthetic_root, tmp_path_factory) -> Path:
    """An LFW-format folder of real JPEGs whose pairs.txt has 10 folds of 5 same + 5 different
    pairs, taken from the built-in pairs set (600 pairs): verification in a test's run at a
    sixth of the cost."""
    src = synthetic_root[1]
    chosen = fold_pairs(src / "pairs.txt", SMALL_PAIRS_PER_FOLD)
    root = tmp_path_factory.mktemp("lfw")
    for line in chosen:
        for person, name in pair_files(line)[0]:
            (root / person).mkdir(exist_ok=True)
            shutil.copy(src / person / name, root / person / name)
    (root / "pairs.txt").write_text(f"10\t{SMALL_PAIRS_PER_FOLD}\n" + "\n".join(chosen) + "\n")
    return root


@pytest.fixture
def train_args(tmp_path, synthetic_root):
    """Command-line options for a fast CPU run of the tiny network on the synthetic JPEG folders
    (run folders are still named after the experiment: ``resnet34_center-*``)."""
    train, _ = synthetic_root
    return ["--dataroot", str(train), "--output_dir", str(tmp_path / "runs"), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "32", "--epochs", "3", "--valid_split", "0.2", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu"]


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def one_error(caplog) -> str:
    """The single ERROR line a command logged (one line, no traceback)."""
    (line,) = errors(caplog)
    assert "\n" not in line and "Traceback" not in line
    return line


def nan_loss_from(call: int):
    """A ``criterion_factory`` building the real softmax + center loss, whose loss turns NaN from
    its ``call``-th forward on (counted from this factory's creation)."""
    from faceignite.losses import SoftmaxCenterLoss

    calls = 0

    class NanFrom(SoftmaxCenterLoss):
        def forward(self, embeddings, labels):
            nonlocal calls
            out = super().forward(embeddings, labels)
            calls += 1
            if calls >= call:
                out["ce"] = out["ce"] * float("nan")
                out["loss"] = out["ce"] + out["center"]
            return out

    return lambda cfg, n: NanFrom(n, cfg.embedding_dim, cfg.center_loss_weight)


def record_epochs(metric: str, into: list):
    """A standard-run hook (``main(..., hooks=[...])``): appends ``trainer.state.metrics[metric]``
    at each epoch end (attached after the progress handler: the epoch's mean) to ``into``."""
    from ignite.engine import Events

    def hook(trainer, state) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED,
                                  lambda e: into.append(float(e.state.metrics[metric])))

    return hook
