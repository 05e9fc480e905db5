"""One writer per run folder: an exclusive lock file ``run.lock`` holding the writer's pid, host
and a heartbeat time that a daemon thread refreshes every minute.

    lock = lock_run_folder(run_dir, "--resume_path")   # FaceIgniteError naming the other writer
    ...                                                 # write checkpoints, run.log, config.json
    lock.release()

A lock is stale (taken over, with a warning) when its pid is gone on this host, or when its
heartbeat is older than :data:`STALE_AFTER_S` (a job requeued on another node, whose first
process died with its node).  The file is made complete under a temporary name and linked into
place (``os.link`` fails when the name exists), so a reader never sees half a lock.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")

LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0       # seconds between two refreshes of the heartbeat
STALE_AFTER_S = 300.0    # a heartbeat older than this (seconds) is a dead writer's


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_lock(path: str) -> dict | None:
    """The ``{"pid", "host", "heartbeat", ...}`` of a lock file, or None when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        int(record["pid"]), str(record["host"]), float(record["heartbeat"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(record: dict | None, path: str, stale_after: float = STALE_AFTER_S) -> str | None:
    """Why the lock ``record`` (read from ``path``) no longer holds, or None while it does."""
    now = time.time()
    if record is None:  # unreadable: judged by the file's age
        try:
            age = now - os.path.getmtime(path)
        except OSError:
            return "gone"
        return f"unreadable and {age:.0f} s old" if age > stale_after else None
    if record["host"] == socket.gethostname() and not _pid_alive(int(record["pid"])):
        return f"pid {record['pid']} on {record['host']} is gone"
    age = now - float(record["heartbeat"])
    if age > stale_after:
        return f"heartbeat of pid {record['pid']} on {record['host']} {age:.0f} s old"
    return None


class RunLock:
    """The lock of one run folder, held by this process; :meth:`release` (idempotent, also run
    at exit) stops the heartbeat and removes the file when it is still this process's."""

    def __init__(self, run_dir: str, heartbeat_s: float = HEARTBEAT_S):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "heartbeat": time.time(), "started": time.time()}
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_new(self) -> bool:
        """Create the lock file (complete, then linked into place); False when one exists."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record, f)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _mine(self) -> bool:
        found = read_lock(self.path)
        return bool(found) and (found["pid"], found["host"]) == (self.record["pid"],
                                                                self.record["host"])

    def refresh(self) -> None:
        """Write a new heartbeat time (atomically); a lock taken over meanwhile is left alone."""
        if not self._mine():
            logger.warning("%s is no longer this run's lock: heartbeat stopped", self.path)
            self._stop.set()
            return
        self.record["heartbeat"] = time.time()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OSError as exc:  # a full disk: the next beat tries again
                logger.warning("cannot refresh %s: %s", self.path, exc.strerror or exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def release(self) -> None:
        """Stop the heartbeat; remove the lock file when it is this process's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        atexit.unregister(self.release)
        try:
            if self._mine():
                os.remove(self.path)
        except OSError:
            pass


def lock_run_folder(run_dir: str, option: str = "--resume_path",
                    heartbeat_s: float = HEARTBEAT_S,
                    stale_after: float = STALE_AFTER_S) -> RunLock:
    """Take the exclusive lock of ``run_dir`` for this process, or raise one
    :class:`FaceIgniteError` line naming ``option``, the folder and the other writer (pid and
    host).  A stale lock (:func:`stale_reason`) is taken over with a warning."""
    lock = RunLock(run_dir, heartbeat_s)
    for _ in range(3):  # a stale lock removed by two newcomers at once: one of them wins
        try:
            if lock._write_new():
                lock.start()
                return lock
        except OSError as exc:
            raise FaceIgniteError(f"{option} {run_dir}: cannot write its lock file "
                                  f"{LOCK_NAME}: {exc.strerror or exc}") from None
        record = read_lock(lock.path)
        reason = stale_reason(record, lock.path, stale_after)
        if reason is None:
            if record is None:
                who = "an unreadable lock file, recently written"
            else:
                age = time.time() - float(record["heartbeat"])
                who = (f"pid {record['pid']} on host {record['host']}, heartbeat "
                       f"{age:.0f} s ago")
            raise FaceIgniteError(
                f"{option} {run_dir}: another run is writing this folder ({who}); wait for it "
                f"to end or stop it (its lock {lock.path} goes stale "
                f"{stale_after:.0f} s after its last heartbeat)")
        if read_lock(lock.path) != record:  # changed meanwhile: judge the new one
            continue
        logger.warning("%s: taking over a stale lock (%s)", lock.path, reason)
        try:
            os.remove(lock.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FaceIgniteError(f"{option} {run_dir}: cannot remove the stale lock "
                                  f"{lock.path}: {exc.strerror or exc}") from None
    raise FaceIgniteError(f"{option} {run_dir}: its lock {lock.path} keeps changing hands: "
                          "another run is starting in this folder")
