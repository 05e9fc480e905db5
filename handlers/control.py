"""Run control: stop on NaN (always), after a wall-clock budget, on Ctrl-C/SIGTERM, or when
accuracy stops improving — without reading anything back from the GPU inside the step.

The NaN guard only accumulates "a loss was non-finite" ON THE DEVICE every iteration.  Reading it
(and, with several processes, agreeing on every stop reason) happens at the *agreement points* of
:class:`StopCheck`: every ``every`` iterations (the recipe: ``--log_interval``, ``--save_interval``
and ``--val_interval``), at every epoch end, and — in a single process, where the other reasons
are host-side flags that cost nothing to look at — at the first iteration where a signal came,
the time limit passed or another handler stopped the trainer.  Attached before any validation or
checkpoint handler, an agreement point runs first at its event, so no checkpoint is ever written
between a non-finite loss and the check that finds it.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, TerminateOnNan

from faceignite.engine import STOP_CODES, TrainerEvents, register_trainer_events
from faceignite.errors import FaceIgniteError
from handlers import events

logger = logging.getLogger("faceignite")


class TerminateOnNanLoss(TerminateOnNan):
    """Ignite's TerminateOnNan, batched: :meth:`update` (every iteration) keeps, on the device,
    which losses were non-finite; :meth:`seen` reads that once (one host sync); :meth:`stop`
    says which loss went NaN and where to resume from.  Calling it does all three (the old
    per-iteration guard, for trainers without a :class:`StopCheck`).

    It stops with ``skip_completed``: nothing that runs at ``COMPLETED`` (final validation, final
    checkpoint) sees the poisoned weights, and it fires ``TrainerEvents.NAN_DETECTED`` first, so
    that handlers which save (checkpoints, Ctrl-C) stop saving.
    """

    def __init__(self, last_checkpoint: Callable[[], str | None] | None = None):
        super().__init__()
        self.last_checkpoint = last_checkpoint or (lambda: None)
        self.bad: dict[str, torch.Tensor] = {}  # loss name -> 0-d bool on the step's device
        self.host_bad: set[str] = set()          # Python floats that were non-finite
        self.clean_at = 0                         # iteration of the last check that read "finite"

    def update(self, engine: Engine) -> None:
        """Every iteration: fold this step's losses into the device flags (no host sync)."""
        output = engine.state.output
        if not isinstance(output, dict):
            return super().__call__(engine)  # Ignite's own guard: reads every iteration
        for k, v in output.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                bad = ~torch.isfinite(v.detach()).all()
                self.bad[k] = bad if k not in self.bad else self.bad[k] | bad
            elif isinstance(v, float) and not math.isfinite(v):
                self.host_bad.add(k)

    def flag(self) -> torch.Tensor | None:
        """"Some loss was non-finite", a 0-d tensor on the device (not read); None: none kept."""
        if not self.bad:
            return None
        return torch.stack(list(self.bad.values())).any()

    def seen(self, engine: Engine) -> bool:
        """Read the flags (one host sync); remember a clean check's iteration."""
        flag = self.flag()
        found = bool(self.host_bad) or (flag is not None and bool(flag))
        if not found:
            self.clean_at = engine.state.iteration
        return found

    def stop(self, engine: Engine, elsewhere: bool = False) -> None:
        """Fire ``NAN_DETECTED``, log, stop with ``skip_completed``.  ``elsewhere``: another
        process saw it (the all-reduced gradients carried it here)."""
        engine.fire_event(TrainerEvents.NAN_DETECTED)
        output = engine.state.output if isinstance(engine.state.output, dict) else {}
        names = sorted(self.host_bad | {k for k, v in self.bad.items() if bool(v)})
        losses = ", ".join(f"{k}={float(output[k]):.4g}" if k in output else k for k in names)
        if elsewhere:
            losses = "in another process"
        checkpoint = self.last_checkpoint()
        where = f"resume from {checkpoint}" if checkpoint else "no checkpoint was saved yet"
        logger.error("loss went NaN: %s at or before epoch %d iteration %d (after iteration %d, "
                     "the last check); stopped without saving (try a lower --lr or --amp off); %s",
                     losses or "a loss", engine.state.epoch, engine.state.iteration,
                     self.clean_at, where)
        engine.terminate(skip_completed=True)

    def __call__(self, engine: Engine) -> None:
        self.update(engine)
        if not engine.should_terminate and self.seen(engine):
            self.stop(engine)


class StopCheck:
    """The agreement point of a run: every reason to stop, read (and agreed on by all processes)
    at once.  One small tensor — NaN seen, signal number, time limit passed, a process already
    stopping — is read once (all-reduced with MAX when there are several processes) and acted
    on: NaN → :meth:`TerminateOnNanLoss.stop`; a signal → the interrupt handler saves and raises
    (exit code 128 + signal number); the time limit → ``terminate()`` (``COMPLETED`` still runs:
    final validation and checkpoint); another process stopping → the same stop here.

    ``every``: iteration intervals whose multiples are agreement points (0s ignored; epoch ends
    always are).  With several processes a signal or the time limit takes effect at the next
    agreement point, in all processes at the same iteration.
    """

    def __init__(self, nan: TerminateOnNanLoss, every: Iterable[int] = (1,),
                 max_time: float | None = None):
        self.nan, self.every = nan, sorted({int(k) for k in every if k and k > 0}) or [1]
        self.max_time = max_time
        self.interrupt: Any = None  # a handlers.interrupt.GracefulInterrupt, set by its attach
        self.distributed = idist.get_world_size() > 1
        self.started = time.monotonic()
        self.checked_at = -1

    def start(self, engine: Engine) -> None:
        self.started = time.monotonic()
        self.nan.clean_at = engine.state.iteration

    def is_point(self, iteration: int) -> bool:
        return any(iteration % k == 0 for k in self.every)

    def _host_reasons(self, engine: Engine) -> tuple[int, int, int]:
        signum = getattr(self.interrupt, "received", None) or 0
        time_up = int(bool(self.max_time) and time.monotonic() - self.started >= self.max_time)
        return signum, time_up, STOP_CODES.get(engine.should_terminate, 1)

    def on_iteration(self, engine: Engine) -> None:
        """First ``ITERATION_COMPLETED`` handler: accumulate, and check when it is time."""
        self.nan.update(engine)
        if self.is_point(engine.state.iteration) or (
                not self.distributed and any(self._host_reasons(engine))):
            self.check(engine)

    def after_others(self, engine: Engine) -> None:
        """Last handler of an iteration or epoch (one process): a handler after the agreement
        point stopped the trainer (early stopping, a hook) — read the NaN flag before
        ``COMPLETED`` saves."""
        if (not self.distributed and engine.should_terminate
                and self.checked_at != engine.state.iteration):
            self.check(engine)

    def check(self, engine: Engine) -> None:
        """Read every reason to stop once (all processes together) and act on it."""
        self.checked_at = engine.state.iteration
        signum, time_up, code = self._host_reasons(engine)
        if self.distributed:
            flag = self.nan.flag()
            local_nan = (flag if flag is not None else torch.zeros((), dtype=torch.bool,
                                                                   device=idist.device()))
            local_nan = local_nan.to(idist.device()) | bool(self.nan.host_bad)
            mine = torch.tensor([signum, time_up, code], device=idist.device(),
                                dtype=torch.float32)
            agreed = idist.all_reduce(torch.cat([local_nan.float().reshape(1), mine]), op="MAX")
            nan, signum, time_up, code = (int(x) for x in agreed.tolist())  # the one read
            seen_here = nan and self.nan.seen(engine)
            if not nan:
                self.nan.clean_at = engine.state.iteration
        else:
            nan = seen_here = self.nan.seen(engine)  # the one read
        if nan:
            self.nan.stop(engine, elsewhere=not seen_here)
        if signum and self.interrupt is not None:
            self.interrupt.stop(engine, signum)  # saves (nothing after a NaN) and raises
        if nan:
            return
        if time_up and not engine.should_terminate:
            logger.info("reached the time limit of --max_time %.0f s: stopping", self.max_time)
            engine.terminate()
        elif code and STOP_CODES.get(engine.should_terminate, 1) != code:
            engine.terminate(skip_completed=code == 2)


def attach(trainer: Engine, max_time: float | None = None, early_stopping: int = 0,
           score_name: str = "lfw_accuracy",
           score_event: events.ValidationEvents | None = None,
           last_checkpoint: Callable[[], str | None] | None = None,
           every: Iterable[int] = (1,)) -> dict:
    """Attach the NaN guard and the agreement point (:class:`StopCheck`), with an optional
    ``max_time`` and an :class:`EarlyStopping`.  Attach it BEFORE every validation and
    checkpoint handler (its handlers must run first at their events), and call
    ``attached["stop_check"].after_others`` last (:func:`attach_last`).

    ``every``: the agreement intervals in iterations (the recipe: log, save and validation
    intervals; ``(1,)``: every iteration, one host read per step).  ``max_time`` (seconds)
    stops cleanly at the next agreement point past the budget (one process: the next
    iteration): ``COMPLETED`` still fires, so a final validation and checkpoint follow.
    ``early_stopping`` = patience in validations of ``score_name``, counted at ``score_event``
    (default: the LFW validation for ``lfw_*`` scores, the held-out one otherwise).  Returns the
    handlers by name.
    """
    register_trainer_events(trainer)
    nan = TerminateOnNanLoss(last_checkpoint)
    check = StopCheck(nan, every, max_time)
    attached: dict = {"nan": nan, "stop_check": check}
    trainer.add_event_handler(Events.STARTED, check.start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, check.on_iteration)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, check.check)
    if early_stopping > 0:
        events.register(trainer)
        if score_event is None:
            score_event = (events.ValidationEvents.VERIFICATION_COMPLETED if score_name.startswith("lfw")
                           else events.ValidationEvents.HOLDOUT_COMPLETED)
        attached["early_stopping"] = EarlyStopping(
            early_stopping, score_function=lambda e: e.state.metrics[score_name], trainer=trainer)
        trainer.add_event_handler(score_event, attached["early_stopping"])
    return attached


def attach_last(trainer: Engine, attached: dict) -> None:
    """After every other handler: read the NaN flag when a later handler stopped the trainer."""
    trainer.add_event_handler(Events.ITERATION_COMPLETED, attached["stop_check"].after_others)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, attached["stop_check"].after_others)


class FirstEpochCheck:
    """A run never ends "done" having trained on nothing: at the end of its first whole epoch
    (a resumed run's partial epoch is not judged), when
    the epoch decoded fewer than two images or images of fewer than two identities (all
    processes together), it stops with one :class:`FaceIgniteError` line (exit code 2),
    before any validation or checkpoint of that epoch.  Reads the labels of each batch the
    loader gave (on the host: no device read), during the first epoch only."""

    def __init__(self) -> None:
        self.decoded, self.skipped, self.labels = 0, 0, set()
        self.iterations, self.done = 0, False

    def on_iteration(self, engine: Engine) -> None:
        if self.done:
            return
        self.iterations += 1
        batch = engine.state.batch
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            _, labels, skipped = batch
            self.decoded += int(labels.numel())
            self.skipped += int(skipped)
            if len(self.labels) < 2:
                self.labels.update(labels[:64].tolist())

    def on_epoch(self, engine: Engine) -> None:
        if self.done:
            return
        if self.iterations < (engine.state.epoch_length or 0):  # a resumed, partial epoch:
            self.__init__()                                      # judge the next, whole one
            return
        self.done = True
        found = sorted(self.labels)[:2]
        mine = torch.tensor([self.decoded, self.skipped] + found + [-1] * (2 - len(found)),
                            dtype=torch.float64)
        if idist.get_world_size() > 1:
            every = idist.all_gather(mine.to(idist.device())).reshape(-1, 4).cpu()
            decoded, skipped = int(every[:, 0].sum()), int(every[:, 1].sum())
            identities = {int(v) for v in every[:, 2:].flatten().tolist() if v >= 0}
        else:
            decoded, skipped, identities = self.decoded, self.skipped, set(found)
        if decoded < 2 or len(identities) < 2:
            raise FaceIgniteError(
                f"epoch {engine.state.epoch} trained on nothing: {decoded} image(s) of "
                f"{len(identities)} identit{'y' if len(identities) == 1 else 'ies'} decoded, "
                f"{skipped} skipped as unreadable (each named above); training needs at least "
                "2 images of 2 identities: check --dataroot")


def attach_first_epoch_check(trainer: Engine) -> FirstEpochCheck:
    """Attach :class:`FirstEpochCheck`: before every validation and checkpoint handler."""
    check = FirstEpochCheck()
    trainer.add_event_handler(Events.ITERATION_COMPLETED, check.on_iteration)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, check.on_epoch)
    return check
