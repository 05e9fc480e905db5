"""What every command shares: the one-line error exit."""
from __future__ import annotations

import functools
import logging
import signal
import sys
from typing import Callable, NoReturn, TypeVar

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
# exit codes of the commands: 0 done; 2 a one-line error (an option, a file); 3 a training run
# stopped on a NaN loss (no checkpoint of the poisoned weights; resume from the last one);
# 75 pre-empted: SIGTERM or SIGUSR1 (SLURM's warning) saved a checkpoint at the next agreement
# point; the same command with --resume_path auto continues (a SLURM script requeues on it;
# 75 is sysexits.h's EX_TEMPFAIL, "try again later"); 130 Ctrl-C, after saving a checkpoint
EXIT_ERROR = 2
EXIT_NAN = 3
EXIT_PREEMPTED = 75
# a scheduler taking the machine back: save, exit EXIT_PREEMPTED, continue with --resume_path auto
PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1")
                           if hasattr(signal, name))
F = TypeVar("F", bound=Callable)


def progress_enabled(progress: bool | None = None) -> bool:
    """Show a progress bar: ``progress`` when given, else when stderr is a terminal (so logs,
    CI and pipes get no bar lines)."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def fail(exc: FaceIgniteError) -> NoReturn:
    """Log ``error: <message>`` (one line) and exit with code 2."""
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.error("error: %s", exc)
    raise SystemExit(EXIT_ERROR) from None


def exits_on_error(main: F) -> F:
    """Decorate a command's ``main``: a :class:`FaceIgniteError` ends it with one line and exit
    code 2 (called from Python, as ``SystemExit(2)``).  However it ends, the persistent
    DataLoader workers it started are stopped before it returns (:mod:`faceignite.data.workers`)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except FaceIgniteError as exc:
            fail(exc)
        finally:
            if "torch.utils.data.dataloader" in sys.modules:  # else no loader ever ran
                from faceignite.data.workers import stop_loader_workers

                stop_loader_workers()

    return wrapper  # type: ignore[return-value]
