"""Custom trainer events fired after each validation, so other handlers can follow them.

The held-out and verification handlers register these on the trainer and fire them once their
metrics are in ``trainer.state.metrics``; checkpoint-by-best and early stopping attach to them
(the trackers log from the evaluator engines themselves: :mod:`handlers.tracking`; each handler
records its engines here, :func:`evaluators`).
``VERIFICATION_COMPLETED`` fires once per verification, after every target (``--lfw`` and each
``--val_targets``) has written its ``<name>_*`` metrics.
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


_EVALUATORS: "weakref.WeakKeyDictionary[Engine, dict[str, Engine]]" = weakref.WeakKeyDictionary()


def add_evaluator(trainer: Engine, tag: str, evaluator: Engine) -> None:
    """Record that ``evaluator`` runs inside one of ``trainer``'s handlers, under ``tag``
    (``"holdout"``, a verification target's name): the run control lets a signal stop it
    mid-way, and the trackers log its metrics by that tag."""
    _EVALUATORS.setdefault(trainer, {})[tag] = evaluator


def evaluators(trainer: Engine) -> dict[str, Engine]:
    """The evaluator engines recorded on ``trainer`` by tag, in the order they were added."""
    return dict(_EVALUATORS.get(trainer, {}))
