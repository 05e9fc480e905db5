"""Real processes for the tests' command lines, forked from one Python that imported the stack once.

``python experiments/resnet34_center.py ...`` spends 2.5-3.5 CPU-s importing torch, ignite (which
imports FSDP), albumentations and torch._dynamo (the first optimizer step) before its first
step: most of what a test's process costs.  The zygote is a process that imported them once;
each command is a fork of it that runs its script, ``-m`` module or ``-c`` code as ``__main__``
with its own argv, working folder, environment, stdin/stdout/stderr and process group.  That is
a real process: its own pid, signals (Ctrl-C to its group, SIGTERM, SIGKILL), exit code,
``atexit`` and children (``--nproc_per_node`` ranks and torchrun workers start from
``sys.executable`` as usual).  What it cannot show is a failure while importing in a fresh
interpreter: ``test_console_scripts`` starts the installed commands themselves for that.

Environment variables read while importing (``OMP_NUM_THREADS``) are the zygote's, i.e. the
test process's; ClearML (which reads its variables on import) is not preloaded.

``Popen``/``run`` mirror :mod:`subprocess` for the arguments the tests use.
"""
from __future__ import annotations

import array
import atexit
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import IO, Any, Sequence

PRELOAD = ("torch", "torch._dynamo", "torch.distributed.run", "ignite.engine", "ignite.handlers",
           "ignite.distributed", "ignite.metrics", "albumentations", "handlers.training",
           "experiments.resnet34_center")
_HEADER = struct.Struct("!I")


# --------------------------------------------------------------------------- the zygote process
def _send(conn: socket.socket, message: Any, fds: Sequence[int] = ()) -> None:
    data = pickle.dumps(message)
    conn.sendall(_HEADER.pack(len(data)))
    if fds:
        socket.send_fds(conn, [data[:1]], list(fds))
        conn.sendall(data[1:])
    else:
        conn.sendall(data)


def _recv(conn: socket.socket, max_fds: int = 0) -> tuple[Any, list[int]]:
    header = b""
    while len(header) < _HEADER.size:
        chunk = conn.recv(_HEADER.size - len(header))
        if not chunk:
            raise EOFError
        header += chunk
    (size,) = _HEADER.unpack(header)
    data, fds = b"", []
    if max_fds:
        first, fds, _, _ = socket.recv_fds(conn, 1, max_fds)
        data = first
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return pickle.loads(data), fds


def _serve(path: str) -> dict:
    """Accept commands on the Unix socket ``path``; returns only in a forked child, with its
    request (its standard streams already in place)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}  # pid -> the connection waiting for its status
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                request, fds = _recv(conn, max_fds=3)
            except (EOFError, OSError):  # the client gave up on a command that still runs
                selector.unregister(conn)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                for other in running.values():
                    other.close()
                _become(request, fds, conn)
                return request
            for fd in fds:
                os.close(fd)
            selector.unregister(conn)
            running[pid] = conn
            _send(conn, ("pid", pid))
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = running.pop(pid, None)
            if conn is not None:
                try:
                    _send(conn, ("exit", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()


def _become(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the forked child: the request's process group, folder, environment and streams."""
    conn.close()
    if request["new_session"]:
        os.setsid()
    else:
        try:
            os.setpgid(0, request["pgid"])  # the client's group, as subprocess.Popen leaves it
        except OSError:
            pass
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


def _zygote_main(path: str) -> None:
    import importlib

    del sys.path[0]  # this file's folder (each command gets its own: _command_path)
    for name in PRELOAD:
        importlib.import_module(name)
    Path(path + ".ready").touch()
    request = _serve(path)  # returns in each forked child
    _exit(_run(request["argv"]))


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
    the standard streams flushed; then without tearing down every module the zygote imported
    (1-2 s of copy-on-write page faults in a fork; ``multiprocessing`` ends its forks so too)."""
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
class _Zygote:
    """This test process's zygote, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.path = ""

    def socket_path(self) -> str:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                folder = tempfile.mkdtemp(prefix="zygote-")
                self.path = os.path.join(folder, "socket")
                repo = str(Path(__file__).resolve().parents[1])
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
                self.proc = subprocess.Popen(
                    [sys.executable, __file__, self.path], cwd=repo, env=env,
                    stdin=subprocess.DEVNULL)
                atexit.register(self.stop)
                ready = Path(self.path + ".ready")
                while not ready.exists():
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"the zygote exited with {self.proc.returncode}")
                    threading.Event().wait(0.02)
            return self.path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_ZYGOTE = _Zygote()


def _stream(spec: Any, mode: str, keep: list) -> int:
    """The fd to hand the child for a ``subprocess``-style stream argument."""
    if spec is None:
        return {"r": 0, "w": 1}[mode]
    if spec == subprocess.DEVNULL:
        f = open(os.devnull, "rb" if mode == "r" else "wb")
        keep.append(f)
        return f.fileno()
    if isinstance(spec, int):
        return spec
    return spec.fileno()


class Popen:
    """``subprocess.Popen(["python", *argv], ...)``, forked from the zygote.  ``argv`` is what
    follows ``python``: a script path, ``-m module`` or ``-c code``, then its arguments."""

    def __init__(self, argv: Sequence[str], *, cwd: str | os.PathLike | None = None,
                 env: dict | None = None, stdin: Any = None, stdout: Any = None,
                 stderr: Any = None, text: bool = False, start_new_session: bool = False):
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
            if spec == subprocess.PIPE and mode == "w":
                read, write = os.pipe()
                child_fds.append(write)
                parent_ends.append(write)
                setattr(self, name, open(read, "r" if text else "rb", closefd=True))
            elif spec == subprocess.STDOUT:
                child_fds.append(child_fds[1])
            else:
                child_fds.append(_stream(spec, mode, keep))
        self._conn = socket.socket(socket.AF_UNIX)
        self._conn.connect(_ZYGOTE.socket_path())
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env),
                   "new_session": start_new_session, "pgid": os.getpgid(0)}
        _send(self._conn, request, child_fds)
        for fd in parent_ends:
            os.close(fd)
        for f in keep:
            f.close()
        (kind, self.pid), _ = _recv(self._conn)
        assert kind == "pid"

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._read_status()
            except BlockingIOError:
                pass
            finally:
                self._conn.setblocking(True)
        return self.returncode

    def _read_status(self) -> None:
        (kind, code), _ = _recv(self._conn)
        assert kind == "exit"
        self.returncode = code
        self._conn.close()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self._read_status()
            except (socket.timeout, TimeoutError):
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            finally:
                if self.returncode is None:
                    self._conn.settimeout(None)
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
        if self.returncode is None:
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
    """``subprocess.run(["python", *argv], ...)``, forked from the zygote."""
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


if __name__ == "__main__":
    _zygote_main(sys.argv[1])
