"""Run set-up shared by experiment files: output folder, logging, seed, device, one-line errors."""
from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.utils import manual_seed, setup_logger
from torch.multiprocessing import ProcessExitedException

from faceignite.cli import PREEMPTION_SIGNALS, fail
from faceignite.errors import FaceIgniteError
from faceignite.output_files import write_error
from faceignite.run_lock import RunLock, lock_run_folder
from faceignite.runtime import rank0_decides, resolve_device

logger = logging.getLogger("faceignite")


@dataclass
class Run:
    """Where a run writes (``output_dir``), what it runs on, and which process of how many."""

    name: str
    output_dir: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    files: DeferredRunFiles | None = None  # rank 0 of a session(deferred=True)

    def commit(self, config: Mapping[str, Any]) -> None:
        """The run's checks passed: write ``config`` (the options as plain data, e.g.
        ``faceignite.config.plain_config(cfg)``) to ``config.json`` and ``run.log`` (with the
        lines so far).  Only for ``session(..., deferred=True)``; a no-op elsewhere and off
        rank 0."""
        if self.files is not None:
            self.files.write(config)


def setup_logging(log_file: str | None = None, rank: int = 0) -> None:
    """Log lines with time to stderr, and to ``log_file`` when given.

    Processes other than rank 0 of a distributed run log warnings and errors only, prefixed
    with their rank (pass them no ``log_file``: ``run.log`` is rank 0's).
    """
    prefix = f"[rank {rank}] " if rank else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for h in list(root.handlers):
        if getattr(h, "_faceignite", False):
            root.removeHandler(h)
            h.close()  # an earlier run's run.log
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.getLogger("ignite").setLevel(logging.WARNING)  # our handlers log the epoch lines
    # an Engine logs the message of every exception it re-raises: it is said once, by fail()
    # (one line) or by the traceback
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)
    for h in handlers:
        h.setFormatter(fmt)
        h._faceignite = True  # type: ignore[attr-defined]
        root.addHandler(h)


def new_run_dir(output_dir: str, name: str) -> str:
    """``output_dir/<name>-<time>`` (the name only: :func:`make_run_dir` creates it)."""
    return os.path.join(output_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def default_run_name(experiment: str, model: str | None) -> str:
    """The run folder's name before its time: ``<experiment>-<model>``, or the experiment's
    name alone when it starts with the model's (``resnet34_center`` with ``resnet34``)."""
    if not model or experiment == model or experiment.startswith(f"{model}_"):
        return experiment
    return f"{experiment}-{model}"


def check_run_name(name: str) -> str:
    """``--name``: one plain folder name (no path separator, not ``.``/``..``/``cache``)."""
    from faceignite.data.index import CACHE_FOLDER

    if (not name or name in (".", "..", CACHE_FOLDER) or os.sep in name
            or (os.altsep and os.altsep in name) or name != name.strip()):
        raise FaceIgniteError(f"--name {name!r}: give a plain folder name (no '/', not '.', "
                              f"'..' or {CACHE_FOLDER!r})")
    return name


def make_named_run_dir(output_dir: str, name: str) -> str:
    """Create ``output_dir/name`` exactly (``--name``); refuse when it exists."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    path = os.path.join(output_dir, check_run_name(name))
    try:
        os.makedirs(output_dir, exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        raise FaceIgniteError(f"--name {name}: {path} exists; resume it with --resume_path "
                              f"{path}, or choose another --name") from None
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, path, "--output_dir")) from None
    return path


def make_run_dir(output_dir: str, name: str, option: str = "--output_dir") -> str:
    """Create a new run folder ``output_dir/<name>-<time>`` and return its absolute path.

    The folder is made with ``os.mkdir`` (no ``exist_ok``): when another run made that name
    first (two runs started in the same second, a job array), this one takes
    ``<name>-<time>-2``, ``-3``, ...; never a folder another run made.  A file in the way, a
    read-only or virtual file system, or a full disk is one :class:`FaceIgniteError` line
    naming ``option`` and the path."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    try:
        os.makedirs(output_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FaceIgniteError(f"{option} {output_dir}: cannot make the folder, a file is in the "
                              f"way at or above it") from None
    except OSError as exc:
        raise FaceIgniteError(f"{option} {output_dir}: cannot make the folder: "
                              f"{exc.strerror or exc}") from None
    base = new_run_dir(output_dir, name)
    for attempt in range(1, 10_000):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue  # another run's: never shared
        except OSError as exc:
            raise FaceIgniteError(write_error(exc, path, option)) from None
    raise FaceIgniteError(f"{option} {output_dir}: {base} and 9,998 numbered folders after it "
                          f"exist")


def run_folder(resume_path: str | None, finetune: bool, output_dir: str, name: str
               ) -> tuple[str | None, str | None]:
    """``(resume_path, folder)`` of a training run: ``--resume_path auto`` resolved
    (:mod:`faceignite.checkpoint.auto`: rank 0 picks, every process follows), and the resumed
    checkpoint's folder with ``--resume_path`` (not ``--finetune``: that is a new run); folder
    ``None`` for a new run, which :func:`session` creates (:func:`make_run_dir`)."""
    from faceignite.checkpoint.auto import resolve_auto_resume

    try:
        resume_path = resolve_auto_resume(resume_path, finetune, output_dir, name)
    except FaceIgniteError as exc:
        setup_logging(rank=idist.get_rank())
        fail(exc)
    if resume_path and not finetune:
        path = os.path.abspath(os.path.expanduser(resume_path))
        return resume_path, (path if os.path.isdir(path) else os.path.dirname(path))
    return resume_path, None


CONFIG_FILE = "config.json"
RESUME_CONFIG = re.compile(r"^config\.resume-(\d+)\.json$")


def write_config(run_dir: str, options: dict[str, Any]) -> str:
    """Write the run's options: ``config.json`` for a new run; in a folder that has one (a
    resume) it is kept, and ``config.resume-<N>.json`` (N = 1, 2, ...) gets this start's
    ``options`` and under ``changed`` each option that differs from the previous start's
    (``{"before": ..., "now": ...}``).  Returns the file written."""
    first = os.path.join(run_dir, CONFIG_FILE)
    plain = json.loads(json.dumps(options, default=str))
    if not os.path.isfile(first):
        with open(first, "w", encoding="utf-8") as f:
            json.dump(plain, f, indent=2)
        return first
    resumes = sorted(int(m.group(1)) for n in os.listdir(run_dir)
                     if (m := RESUME_CONFIG.match(n)))
    previous_file = (os.path.join(run_dir, f"config.resume-{resumes[-1]}.json") if resumes
                     else first)
    try:
        with open(previous_file, encoding="utf-8") as f:
            previous = json.load(f)
        previous = previous.get("options", previous) if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        previous = {}  # unreadable: every option is reported as changed
    changed = {k: {"before": previous.get(k), "now": v} for k, v in plain.items()
               if k not in ("resume_path",) and previous.get(k) != v}
    path = os.path.join(run_dir, f"config.resume-{(resumes[-1] if resumes else 0) + 1}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"changed": changed, "options": plain}, f, indent=2)
    if changed:
        logger.info("options changed since the previous start (%s): %s",
                    os.path.basename(previous_file),
                    ", ".join(f"--{k} {v['before']} -> {v['now']}" for k, v in changed.items()))
    return path


class DeferredRunFiles:
    """``run.log`` and ``config.json`` of a run, written only once its checks passed
    (:meth:`Run.commit`): a refused resume leaves the original run's files as they were.
    Until then the log lines go to stderr and are kept here, then written to ``run.log``
    first."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.buffer = logging.handlers.MemoryHandler(capacity=1 << 30,
                                                     flushLevel=logging.CRITICAL + 1)
        self.buffer._faceignite = True  # type: ignore[attr-defined]
        logging.getLogger().addHandler(self.buffer)
        self.done = False

    def write(self, config: Mapping[str, Any]) -> None:
        """Write ``config`` to ``config.json``, open ``run.log`` (appending) with the lines kept
        so far."""
        if self.done:
            return
        self.done = True
        root = logging.getLogger()
        try:
            write_config(self.run_dir, dict(config))
            log = logging.FileHandler(os.path.join(self.run_dir, "run.log"), encoding="utf-8")
        except OSError as exc:
            self.discard()
            raise FaceIgniteError(write_error(exc, self.run_dir, "--output_dir")) from None
        log.setFormatter(next((h.formatter for h in root.handlers if h is not self.buffer
                               and getattr(h, "_faceignite", False)), None))
        log._faceignite = True  # type: ignore[attr-defined]
        self.buffer.setTarget(log)
        self.buffer.flush()
        self.discard()
        root.addHandler(log)

    def discard(self) -> None:
        logging.getLogger().removeHandler(self.buffer)
        self.buffer.buffer.clear()
        self.buffer.setTarget(None)


SETUP_FILES = ("config.json", "run.log")


def remove_if_only_setup(run_dir: str) -> bool:
    """Remove a new run folder that holds nothing but what :func:`session` wrote at its start
    (``config.json``, ``run.log``): a command that failed before writing any result leaves no
    ``runs/evaluate-*`` folder of nothing behind.  Its log file is closed first; the error
    line still goes to stderr.  Returns whether it was removed."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return False
    if any(n not in SETUP_FILES for n in names):
        return False
    root = logging.getLogger()
    for h in list(root.handlers):
        if (isinstance(h, logging.FileHandler)
                and os.path.dirname(os.path.abspath(h.baseFilename)) == os.path.abspath(run_dir)):
            root.removeHandler(h)
            h.close()
    try:
        for n in names:
            os.unlink(os.path.join(run_dir, n))
        os.rmdir(run_dir)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- launching
def launched_externally() -> bool:
    """Started as one of several processes by torchrun (or another ``env://`` launcher), or as
    one task of a several-task ``srun`` step (Ignite reads the SLURM variables)."""
    return (int(os.environ.get("WORLD_SIZE", "1")) > 1
            or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1)


def shared_store_warning() -> str | None:
    """Why torchrun ``--max_restarts`` may fail to restart this group, or None.  With the
    rendezvous store shared with the workers (torchrun's default), a restarted group can read
    the previous group's addresses and fail to connect ("Gloo connectFullMesh failed ...
    Connection refused"; PyTorch #135712): ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` gives each
    group its own store."""
    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1"
            or os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") in ("", "0")):
        return None
    return ("torchrun --max_restarts with the rendezvous store shared with the workers: a "
            "restarted group may fail to connect (PyTorch #135712); export "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun")


def resolve_backend(backend: str = "auto", nproc_per_node: int = 1,
                    device: str = "auto") -> str | None:
    """The ``idist.Parallel`` backend of ``--backend``: ``None`` runs one plain process.

    ``auto``: ``nccl`` on CUDA (``gloo`` with ``--device cpu`` or no GPU) when torchrun or srun
    started this process or ``nproc_per_node > 1``, else ``None``.  Inside a process group that already
    exists (a launcher of your own), ``None`` as well: the run joins it.
    """
    if backend == "none" or (dist.is_available() and dist.is_initialized()):
        return None
    if backend == "auto":
        if not launched_externally() and nproc_per_node <= 1:
            return None
        cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
        return "nccl" if cuda else "gloo"
    return backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parallel_options(nproc_per_node: int, backend: str | None, device: str,
                     start_method: str = "spawn") -> dict[str, Any]:
    """Keyword arguments of ``idist.Parallel`` for ``--backend``, ``--nproc_per_node`` and
    ``--start_method`` (used only when this process starts the others)."""
    nproc = max(1, nproc_per_node)
    backend = resolve_backend(backend, nproc, device)
    if nproc > 1 and launched_externally():
        raise FaceIgniteError(f"--nproc_per_node {nproc} spawns processes itself: leave it out "
                              f"under torchrun/srun (they start the processes)")
    if backend is None:
        if nproc > 1:
            raise FaceIgniteError(f"--nproc_per_node {nproc} needs a backend: --backend auto, "
                                  f"nccl or gloo (not none)")
        return {"backend": None}
    if backend == "nccl" and not torch.cuda.is_available():
        raise FaceIgniteError("--backend nccl needs CUDA GPUs: use --backend gloo on CPU")
    if nproc > 1 and backend == "nccl" and nproc > torch.cuda.device_count():
        raise FaceIgniteError(f"--nproc_per_node {nproc} with nccl: this machine has "
                              f"{torch.cuda.device_count()} GPUs (one process per GPU)")
    options: dict[str, Any] = {"backend": backend}
    if nproc > 1:
        check_start_method(start_method, backend, device)
        options.update(nproc_per_node=nproc, start_method=start_method,
                       master_port=int(os.environ.get("MASTER_PORT") or _free_port()))
    return options


def check_start_method(start_method: str, backend: str, device: str) -> None:
    """Refuse a ``--start_method`` this platform lacks, and ``fork`` for a CUDA run (a forked
    process cannot use CUDA once its parent has touched it, which checking for GPUs does)."""
    available = multiprocessing.get_all_start_methods()
    if start_method not in available:
        raise FaceIgniteError(f"--start_method {start_method} is not available on this platform "
                              f"(it has {', '.join(available)})")
    cuda = backend == "nccl" or str(device).startswith("cuda") or (
        str(device) == "auto" and torch.cuda.is_available())
    if start_method == "fork" and cuda:
        raise FaceIgniteError("--start_method fork is for CPU runs (a forked process cannot use "
                              "CUDA): use spawn or forkserver, or --device cpu")


_forwarding = False  # this process is a launcher forwarding signals (_forward_preemption)


def _forked_child_starts_with_default_signals() -> None:
    """A process forked while forwarding (``--start_method fork``) starts as a spawned one:
    SIGTERM/SIGUSR1 at their defaults until its run sets its own handlers."""
    global _forwarding
    if _forwarding:
        _forwarding = False
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forked_child_starts_with_default_signals)


@contextlib.contextmanager
def _forward_preemption() -> Iterator[None]:
    """While ``--nproc_per_node`` processes run: SIGTERM/SIGUSR1 to this launcher (a scheduler or
    ``kill PID``) goes on to the started processes, which save a checkpoint and exit 75; this
    one then exits with their code instead of dying by the signal.  A signal sent to the whole
    process group reaches them twice: they take a repeat within a few seconds as the same one
    (``handlers.interrupt``)."""
    global _forwarding

    def forward(signum: int, _frame) -> None:
        for process in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in PREEMPTION_SIGNALS}
    _forwarding = True
    try:
        yield
    finally:
        _forwarding = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def parallel(nproc_per_node: int = 1, backend: str | None = "auto", device: str = "auto",
             start_method: str = "spawn") -> Iterator[idist.Parallel]:
    """``idist.Parallel`` for the options: ``parallel.run(training, ...)`` then runs ``training``
    in this process, in each process torchrun/SLURM started, or in ``--nproc_per_node`` processes
    started here (``start_method``: spawn, fork or forkserver).  A started process that fails has
    logged why; this one then exits with its code.  On Ctrl-C this one waits for the started
    processes, which save a checkpoint and stop.
    """
    setup_logger("ignite.distributed.launcher.Parallel", level=logging.WARNING)  # ours says it
    try:
        options = parallel_options(nproc_per_node, backend, device, start_method)
    except FaceIgniteError as exc:
        setup_logging()
        fail(exc)
    forwarding = _forward_preemption() if "nproc_per_node" in options else contextlib.nullcontext()
    try:
        with forwarding, idist.Parallel(**options) as launcher:
            yield launcher
    except ProcessExitedException as exc:  # a spawned process exited (error, interrupt)
        raise SystemExit(exc.exit_code or 1) from None
    except KeyboardInterrupt:
        if "nproc_per_node" not in options:
            raise
        for process in multiprocessing.active_children():  # they got it too: let them save
            process.join()
        raise SystemExit(130) from None


@contextlib.contextmanager
def session(name: str, output_dir: str, *, device: str = "auto", amp: str = "off",
            seed: int = 0, run_dir: str | None = None, run_name: str | None = None,
            folder_name: str | None = None, config: Mapping[str, Any] | None = None,
            deferred: bool = False) -> Iterator[Run]:
    """Create the run folder (``run_dir``, an existing one; default a new
    ``output_dir/<name>-<time>``, made by :func:`make_run_dir`), log to ``run.log`` there,
    seed everything with ``seed``, pick ``device`` (``--amp fp16`` needs CUDA).

    ``folder_name``: the new folder's name before its time (default ``name``); with
    ``run_name`` (``--name``) the folder is ``output_dir/<run_name>`` exactly.

    ``config`` (the options as plain data) is written to ``config.json`` at the start; with
    ``deferred`` nothing is written until ``run.commit(config)``, after the caller's checks (a
    resume's checkpoint and data): a refused resume rewrites nothing.

    A :class:`FaceIgniteError` inside ends the program with its one-line message (exit code 2);
    a new run folder still empty then is removed.  In a distributed run every process calls it:
    they share rank 0's run folder; only rank 0 writes ``run.log`` and ``config.json``; each
    process trains on ``idist.device()``.
    """
    rank, world_size = idist.get_rank(), idist.get_world_size()
    try:
        requested, device = device, resolve_device(device)  # before anything is written
        if amp == "fp16" and device.type != "cuda":
            raise FaceIgniteError(f"--amp fp16 needs a CUDA GPU (--device {requested} is "
                                  f"{device}, where fp16 has no gradient scaler): use --amp "
                                  f"bf16 or off")
    except FaceIgniteError as exc:
        setup_logging(rank=rank)
        fail(exc)
    new = run_dir is None
    if new:  # rank 0 makes it and tells the others (or the one line of why it could not)
        try:
            run_dir = rank0_decides(lambda: make_named_run_dir(output_dir, run_name)
                                    if run_name else make_run_dir(output_dir, folder_name or name))
        except FaceIgniteError as exc:
            setup_logging(rank=rank)
            fail(exc)
    else:
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as exc:
            setup_logging(rank=rank)
            fail(FaceIgniteError(write_error(exc, run_dir, "--resume_path")))
    lock = take_run_lock(run_dir, "--output_dir" if new else "--resume_path", rank,
                         remove_if_empty=new)
    try:  # a failure before the run starts releases the lock too
        files = None
        if deferred:
            setup_logging(None, rank)
            if rank == 0:
                files = DeferredRunFiles(run_dir)
        else:
            setup_logging(os.path.join(run_dir, "run.log") if rank == 0 else None, rank)
        manual_seed(seed)
        if world_size > 1 and device.type == "cuda":
            if device != idist.device() and device.index is not None:
                logger.warning("--device %s ignored: process %d trains on %s", device, rank,
                               idist.device())
            device = idist.device()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif world_size > 1 and "OMP_NUM_THREADS" not in os.environ:  # as torchrun would set it
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // idist.get_nproc_per_node()))
        if rank == 0 and not deferred and config is not None:
            write_config(run_dir, dict(config))
        where = (f", {world_size} processes ({idist.backend()}, {idist.get_nnodes()} node(s))"
                 if world_size > 1 else "")
        logger.info("%s: output in %s, device %s%s", name, run_dir, device, where)
        if shared_store_warning():
            logger.warning("%s", shared_store_warning())
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        yield Run(name, run_dir, device, rank, world_size, files)
    except FaceIgniteError as exc:
        if files is not None and not files.done:
            files.discard()
            if new:  # refused before anything was written: leave no empty run folder
                if lock is not None:
                    lock.release()
                with contextlib.suppress(OSError):
                    os.rmdir(run_dir)
        elif new and rank == 0:  # failed before it wrote a result: no folder of nothing
            if lock is not None:
                lock.release()  # run.lock goes first: a folder of nothing else is removed
            remove_if_only_setup(run_dir)
        fail(exc)
    except KeyboardInterrupt as exc:  # handlers.interrupt saved a checkpoint first and says where
        logger.warning("%s", exc or "interrupted")
        raise SystemExit(getattr(exc, "exit_code", 130)) from None
    finally:
        if lock is not None:
            lock.release()


def take_run_lock(run_dir: str, option: str, rank: int = 0,
                  remove_if_empty: bool = False) -> RunLock | None:
    """Rank 0 takes the run folder's exclusive lock (:func:`faceignite.run_lock.lock_run_folder`)
    for every place a run starts writing a run folder, new or resumed; every process learns
    whether it got it.  A second writer ends here with one line naming the other (pid, host);
    ``remove_if_empty``: a folder this run just made is removed then.  The lock (rank 0's;
    None elsewhere) is released when the run ends, however it ends."""
    taken: list[RunLock] = []  # rank 0's lock
    try:
        rank0_decides(lambda: taken.append(lock_run_folder(run_dir, option)) or "")
    except FaceIgniteError as exc:
        setup_logging(rank=rank)
        if remove_if_empty and rank == 0:
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)
        fail(exc)
    return taken[0] if taken else None
