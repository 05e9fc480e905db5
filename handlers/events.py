"""Custom trainer events fired after each validation, so other handlers can follow them.

The held-out and verification handlers register these on the trainer and fire them once their
metrics are in ``trainer.state.metrics``; checkpoint-by-best, early stopping and trackers attach
to them.  ``VERIFICATION_COMPLETED`` fires once per verification, after every target (``--lfw`` and each
``--val_targets``) has written its ``<name>_*`` metrics; :func:`verification_targets` names them.
"""
from __future__ import annotations

import weakref

from ignite.engine import Engine, EventEnum

from faceignite.engine import TrainerEvents  # noqa: F401  (NAN_DETECTED, fired by the NaN guard)


class ValidationEvents(EventEnum):
    HOLDOUT_COMPLETED = "holdout_completed"
    VERIFICATION_COMPLETED = "verification_completed"
    LFW_COMPLETED = "verification_completed"  # its former name: an alias of the same event


def register(trainer: Engine) -> None:
    """Make the trainer accept :class:`ValidationEvents` (idempotent)."""
    if not trainer.has_registered_events(ValidationEvents.HOLDOUT_COMPLETED):
        trainer.register_events(*ValidationEvents)


_TARGETS: "weakref.WeakKeyDictionary[Engine, list[str]]" = weakref.WeakKeyDictionary()


def add_verification_target(trainer: Engine, name: str) -> None:
    """Record that a verification handler writes ``<name>_*`` metrics on ``trainer``."""
    names = _TARGETS.setdefault(trainer, [])
    if name not in names:
        names.append(name)


def verification_targets(trainer: Engine) -> list[str]:
    """The names of the verification targets attached to ``trainer``, in order."""
    return list(_TARGETS.get(trainer, ()))
