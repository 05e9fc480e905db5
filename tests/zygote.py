"""Real processes for the tests' command lines, forked from a Python that imported the stack once.

``python experiments/resnet34_center.py ...`` spends 2.5-3.5 CPU-s importing torch, ignite (which
imports FSDP), albumentations and torch._dynamo (the first optimizer step) before its first
step: most of what a test's process costs.  Here a command is a fork of this test process's
``multiprocessing`` forkserver, which imported :data:`PRELOAD` once (``conftest`` sets it; the
tests' own two-process runs fork from it too).  The fork runs the command's script, ``-m``
module or ``-c`` code as ``__main__`` with its own argv, working folder, environment,
stdin/stdout/stderr and process group, as the main process of its program.  That is a real
process: its own pid, signals (Ctrl-C to its group, SIGTERM, SIGKILL), exit code, ``atexit`` and
children (spawned ``--nproc_per_node`` ranks and torchrun's workers start from
``sys.executable`` as usual: ``test_custom_example`` and ``test_elastic`` run the experiment
files in fresh interpreters that way; ``--start_method fork`` ranks are forks of the command).
It ends as ``python`` does but without tearing down every module (``_exit``).

Environment variables read while importing (``OMP_NUM_THREADS``) are the forkserver's, i.e. the
test process's; ClearML (which reads its variables on import) is not preloaded.

``Popen``/``run`` mirror :mod:`subprocess` for the arguments the tests use.
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading
import types
from multiprocessing import reduction
from pathlib import Path
from typing import IO, Any, Sequence

PRELOAD = ("torch", "torch._dynamo", "torch.distributed.run", "ignite.engine", "ignite.handlers",
           "ignite.distributed", "ignite.metrics", "albumentations", "handlers.training",
           "experiments.resnet34_center", "zygote_freeze")


# ------------------------------------------------------------------------- in the forked child
def _command(request: dict, fds: list[int]) -> None:
    """The forkserver's child: becomes the command's process, runs it and exits."""
    # the main process of its own program (which may start processes of its own), not a
    # daemonic multiprocessing child of the test
    this = multiprocessing.current_process()
    this._name, this._parent_pid, this._parent_name = "MainProcess", None, None
    this._config["daemon"] = False
    multiprocessing.process._parent_process = None
    _become(request, fds)
    _exit(_run(request["argv"]))


def _become(request: dict, fds: list[int]) -> None:
    """The request's session, folder, environment and standard streams.  Without a new
    session the process stays in the forkserver's process group, which is the test process's
    (the server is its child), as ``subprocess.Popen`` leaves it."""
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    sys.path[:] = _command_path(request["argv"], request["env"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _run_as_main(argv: list[str]) -> None:
    """``python ARGV...`` from here: a script, ``-m module`` or ``-c code``."""
    import runpy

    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.modules.pop(argv[1], None)  # preloaded: run afresh as __main__, as python -m does
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        main = types.ModuleType("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


def _command_path(argv: list[str], env: dict) -> list[str]:
    """``sys.path`` as ``python ARGV...`` with ``env`` starts: the script's folder (the working
    folder for ``-m``, ``""`` for ``-c``), then ``PYTHONPATH``, then the installation's."""
    first = {"-m": os.getcwd(), "-c": ""}.get(argv[0], str(Path(argv[0]).resolve().parent))
    ours = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    theirs = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [first, *theirs, *(p for p in sys.path if p not in ours)]


def _run(argv: list[str]) -> int | None:
    """Run the command as the interpreter would; its exit code, or ``None`` for an uncaught
    Ctrl-C (``KeyboardInterrupt``), which ends ``python`` by SIGINT after its traceback."""
    try:
        _run_as_main(argv)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return None
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit(code: int | None) -> None:
    """End as ``python`` ends: ``atexit`` functions (logging, ClearML, ``weakref.finalize``),
    the standard streams flushed; then without tearing down every module the forkserver
    imported (1-2 s of copy-on-write page faults in a fork; ``multiprocessing`` ends its forks
    so too)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code is None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


# ------------------------------------------------------------------------------ the test side
class _Fd:
    """A file descriptor handed to the forked child (sent over the forkserver's socket)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _inherited, (reduction.DupFd(self.fd),)


def _inherited(dup) -> int:
    return dup.detach()


def _stream(spec: Any, mode: str, keep: list) -> int:
    """The fd to hand the child for a ``subprocess``-style stream argument."""
    if spec is None and mode == "w":
        return 1
    if spec is None or spec == subprocess.DEVNULL:  # an xdist worker's stdin is its channel
        f = open(os.devnull, "rb" if mode == "r" else "wb")
        keep.append(f)
        return f.fileno()
    if isinstance(spec, int):
        return spec
    return spec.fileno()


class Popen:
    """``subprocess.Popen(["python", *argv], ...)``, forked from the forkserver.  ``argv`` is
    what follows ``python``: a script path, ``-m module`` or ``-c code``, then its arguments.
    Standard input is ``/dev/null`` unless given."""

    def __init__(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
                 env: dict | None = None, stdin: Any = None, stdout: Any = None,
                 stderr: Any = None, text: bool = False, start_new_session: bool = False):
        if stdin == subprocess.PIPE:
            raise ValueError("stdin=PIPE is not supported: commands read /dev/null or a file")
        argv = [str(a) for a in argv]
        if argv and argv[0] == sys.executable:
            argv = argv[1:]
        self.args = argv
        self.returncode: int | None = None
        self.stdout: IO | None = None
        self.stderr: IO | None = None
        keep: list = []
        child_fds, parent_ends = [], []
        for spec, mode, name in ((stdin, "r", "stdin"), (stdout, "w", "stdout"),
                                 (stderr, "w", "stderr")):
            if spec == subprocess.PIPE:  # stdout or stderr (stdin=PIPE refused above)
                read, write = os.pipe()
                child_fds.append(write)
                parent_ends.append(write)
                setattr(self, name, open(read, "r" if text else "rb", closefd=True))
            elif spec == subprocess.STDOUT:
                child_fds.append(child_fds[1])
            else:
                child_fds.append(_stream(spec, mode, keep))
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env),
                   "new_session": start_new_session}
        self._process = multiprocessing.get_context("forkserver").Process(
            target=_command, args=(request, [_Fd(fd) for fd in child_fds]),
            daemon=True)  # a command a failed test left running is ended when pytest exits
        self._process.start()
        self.pid = self._process.pid
        for fd in parent_ends:
            os.close(fd)
        for f in keep:
            f.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._process.join(timeout)
            if self.poll() is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        results: dict[str, Any] = {}
        readers = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, s.read()))
                   for n, s in (("stdout", self.stdout), ("stderr", self.stderr)) if s]
        for r in readers:
            r.start()
        self.wait(timeout)
        for r in readers:
            r.join()
        return results.get("stdout"), results.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not to a pid the system may have given to another process
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.stdout, self.stderr):
            if s:
                s.close()
        if self.returncode is None:
            self.wait()


def run(argv: Sequence[str], *, capture_output: bool = False, timeout: float | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(["python", *argv], ...)``, forked from the forkserver."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = Popen(argv, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
