"""What every command shares: the one-line error exit."""
from __future__ import annotations

import functools
import logging
from typing import Callable, NoReturn, TypeVar

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
F = TypeVar("F", bound=Callable)


def fail(exc: FaceIgniteError) -> NoReturn:
    """Log ``error: <message>`` (one line) and exit with code 2."""
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.error("error: %s", exc)
    raise SystemExit(2) from None


def exits_on_error(main: F) -> F:
    """Decorate a command's ``main``: a :class:`FaceIgniteError` ends it with one line and exit
    code 2 (called from Python, as ``SystemExit(2)``)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except FaceIgniteError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]
