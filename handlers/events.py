"""Custom trainer events fired after each validation, so other handlers can follow them.

The held-out and LFW handlers register these on the trainer and fire them once their metrics are
in ``trainer.state.metrics``; checkpoint-by-best, early stopping and trackers attach to them.
"""
from __future__ import annotations

from ignite.engine import Engine, EventEnum

from faceignite.engine import TrainerEvents  # noqa: F401  (NAN_DETECTED, fired by the NaN guard)


class ValidationEvents(EventEnum):
    HOLDOUT_COMPLETED = "holdout_completed"
    LFW_COMPLETED = "lfw_completed"


def register(trainer: Engine) -> None:
    """Make the trainer accept :class:`ValidationEvents` (idempotent)."""
    if ValidationEvents.HOLDOUT_COMPLETED not in trainer._allowed_events:
        trainer.register_events(*ValidationEvents)
