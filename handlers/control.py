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

:class:`RunControl` is all of it as one object, attached with one ``with`` block around the other
handlers: it owns its first and its last places, saves through the checkpointer it is given
(``save_with``) and ends a NaN stop with exit code 3.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, TerminateOnNan

from faceignite.cli import EXIT_NAN
from faceignite.data.workers import stop_loader_workers
from faceignite.engine import STOP_CODES, TrainerEvents, register_trainer_events, stop_together
from faceignite.errors import FaceIgniteError
from handlers import events, interrupt

logger = logging.getLogger("faceignite")
SAVED_AT = re.compile(r"_(\d+)\.pt$")  # a training checkpoint's name ends with its iteration


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
    (exit code 130 for Ctrl-C, 75 for SIGTERM/SIGUSR1: pre-empted); the time limit →
    ``terminate()`` (``COMPLETED`` still runs: final validation and checkpoint); another process
    stopping → the same stop here.

    ``every``: iteration intervals whose multiples are agreement points (0s ignored; epoch ends
    always are).  With several processes a signal or the time limit takes effect at the next
    agreement point, in all processes at the same iteration.
    """

    def __init__(self, nan: TerminateOnNanLoss, every: Iterable[int] = (1,),
                 max_time: float | None = None):
        self.nan, self.every = nan, sorted({int(k) for k in every if k and k > 0}) or [1]
        self.max_time = max_time
        self.interrupt: Any = None  # a handlers.interrupt.GracefulInterrupt: RunControl's
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
        if self.interrupt is not None:
            self.interrupt.announce()  # a signal this iteration: said now, acted on at a point
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


class FirstEpochCheck:
    """A run never ends "done" having trained on nothing: at the end of its first whole epoch
    (a resumed run's partial epoch is not judged), when
    the epoch decoded fewer than two images or images of fewer than two identities (all
    processes together), it stops with one :class:`FaceIgniteError` line (exit code 2),
    before any validation or checkpoint of that epoch.  Reads the labels of each batch the
    loader gave (on the host: no device read), during the first epoch only.  A trainer whose
    batches are not the face loader's ``(images, labels, skipped)`` is not judged."""

    def __init__(self) -> None:
        self.decoded, self.skipped, self.labels = 0, 0, set()
        self.iterations, self.face_batches, self.done = 0, 0, False

    def on_iteration(self, engine: Engine) -> None:
        if self.done:
            return
        self.iterations += 1
        batch = engine.state.batch
        if isinstance(batch, (tuple, list)) and len(batch) == 3:
            _, labels, skipped = batch
            self.face_batches += 1
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
        if not self.face_batches:
            return
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


class Saver(Protocol):
    """What the run control saves with: :class:`handlers.checkpoint.Checkpointer`."""

    last_checkpoint: str | None
    best_checkpoint: str | None

    def save_now(self, engine: Engine) -> str | None: ...

    def summary(self, metrics: Any = None) -> str: ...


class RunControl:
    """Everything that stops a run, as one object attached around the other handlers::

        with RunControl(trainer, max_time=..., early_stopping=..., every=...) as control:
            ...  # schedule, validations, progress
            control.save_with(checkpoint.attach(trainer, state, ...))
            control.close_at_end(tracker)
        metrics = control.run(loader, max_epochs)

    ``__enter__`` attaches what must come FIRST at its events — the agreement point
    (:class:`StopCheck`: the NaN guard's device flags read, ``max_time``, Ctrl-C/SIGTERM/SIGUSR1,
    all processes agreeing) every ``every`` iterations and at each epoch end, the first-epoch
    check (:class:`FirstEpochCheck`), early stopping on ``score_name`` at ``score_event`` —
    so no validation or checkpoint of an iteration runs before its check.  ``__exit__``
    attaches what must come LAST: the NaN read when a later handler stopped a single-process
    run, and the stop agreement of several processes (:func:`faceignite.engine.stop_together`).

    A signal saves through the checkpointer given to :meth:`save_with` (created inside the
    block, after the control's first handlers); every validation engine registered on the
    trainer (``handlers.events.add_evaluator``: the held-out and verification handlers do) is
    guarded at ``STARTED``, so a signal stops a long validation at its next agreement point
    (every ``validation_every`` batches).  :meth:`run` closes what :meth:`close_at_end` was
    given however the run ends, and turns a NaN stop into ``SystemExit(EXIT_NAN)`` (exit code
    3).  ``signals=()`` (a library call, a test) leaves the process's signal handlers alone.

    A checkpoint attached before the control (outside the block) would save an iteration
    before its NaN check: :meth:`save_with` outside the block, and a checkpoint found written
    before the check of its iteration, stop with one :class:`FaceIgniteError` line.
    """

    def __init__(self, trainer: Engine, *, max_time: float | None = None,
                 early_stopping: int = 0, score_name: str = "val_accuracy",
                 score_event: events.ValidationEvents | None = None,
                 every: Iterable[int] = (1,), signals: Sequence[int] = (),
                 validation_every: int = 10):
        self.trainer, self.every = trainer, tuple(every)
        self.early_stopping, self.score_name = early_stopping, score_name
        self.score_event = score_event or (
            events.ValidationEvents.VERIFICATION_COMPLETED
            if not score_name.startswith("val_") else events.ValidationEvents.HOLDOUT_COMPLETED)
        self.validation_every = validation_every
        self.saver: Saver | None = None
        self.to_close: list = []
        self.nan_seen = False
        self.position = "before"  # "inside" the with block, then "after"
        self.nan = TerminateOnNanLoss(self.last_checkpoint)
        self.stop_check = StopCheck(self.nan, self.every, max_time)
        self.signals = interrupt.GracefulInterrupt(trainer, self.save, signals)
        self.stop_check.interrupt = self.signals  # the agreement point acts on signals
        self.first_epoch = FirstEpochCheck()
        self.guarded: set[int] = set()

    # --- the with block: first and last places ----------------------------------------------
    def __enter__(self) -> "RunControl":
        trainer, check = self.trainer, self.stop_check
        register_trainer_events(trainer)
        events.register(trainer)
        trainer.add_event_handler(Events.STARTED, check.start)
        trainer.add_event_handler(Events.STARTED, self.guard_validations)
        if self.signals.signals:
            trainer.add_event_handler(Events.STARTED, self.signals.install)
            trainer.add_event_handler(Events.COMPLETED, self.signals.restore)
            trainer.add_event_handler(Events.TERMINATE, self.signals.restore)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.first_at_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.first_at_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.first_epoch.on_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.first_epoch.on_epoch)
        trainer.add_event_handler(TrainerEvents.NAN_DETECTED, self.on_nan)
        if self.early_stopping > 0:
            trainer.add_event_handler(self.score_event, EarlyStopping(
                self.early_stopping, score_function=self.score, trainer=trainer))
        self.position = "inside"
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            return  # the block failed: its error goes on, nothing more is attached
        trainer = self.trainer
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.stop_check.after_others)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.stop_check.after_others)
        stop_together(trainer, every=self.every)
        self.position = "after"

    # --- what the other handlers give it -----------------------------------------------------
    def save_with(self, saver: Saver) -> Saver:
        """Save with ``saver`` on a signal, and name its last file after a NaN stop.  Call it
        inside the ``with`` block, with a checkpointer attached there; returns ``saver``."""
        if self.position != "inside":
            raise FaceIgniteError(
                "attach the run control first: call save_with(checkpoint.attach(...)) inside "
                "`with RunControl(trainer, ...) as control:`, so that every checkpoint follows "
                "the NaN check of its iteration")
        self.saver = saver
        return saver

    def close_at_end(self, *trackers: Any) -> None:
        """Close each tracker (``close()``; None is skipped) when :meth:`run` ends, however it
        ends (a NaN stop or a signal skips ``COMPLETED``, where trackers close themselves)."""
        self.to_close += [t for t in trackers if t is not None]

    def guard_validations(self, _: Engine | None = None) -> None:
        """Let a signal stop every validation engine registered on the trainer (once each)."""
        for tag, evaluator in events.evaluators(self.trainer).items():
            if id(evaluator) not in self.guarded:
                self.guarded.add(id(evaluator))
                what = "held-out" if tag == "holdout" else tag
                self.signals.guard(evaluator, every=self.validation_every,
                                   what=f"{what} validation")

    # --- what it reads and does --------------------------------------------------------------
    def last_checkpoint(self) -> str | None:
        return self.saver.last_checkpoint if self.saver is not None else None

    def best_checkpoint(self) -> str | None:
        return self.saver.best_checkpoint if self.saver is not None else None

    def save(self, engine: Engine) -> str | None:
        """The checkpoint of a stopped run (None: no checkpointer was given)."""
        return self.saver.save_now(engine) if self.saver is not None else None

    def score(self, engine: Engine) -> float:
        return engine.state.metrics[self.score_name]

    def on_nan(self, _: Engine) -> None:
        self.nan_seen = True

    def first_at_iteration(self, engine: Engine) -> None:
        self.refuse_earlier_saves(engine)
        self.stop_check.on_iteration(engine)

    def first_at_epoch(self, engine: Engine) -> None:
        self.refuse_earlier_saves(engine)
        self.stop_check.check(engine)

    def refuse_earlier_saves(self, engine: Engine) -> None:
        """A checkpoint of this iteration, written before the control's first handler ran,
        was attached before the control: it saves before the NaN check."""
        path = self.last_checkpoint()
        match = SAVED_AT.search(os.path.basename(path)) if path else None
        if match and int(match.group(1)) == engine.state.iteration and not self.nan_seen:
            raise FaceIgniteError(
                f"attach the run control first: {path} was written before the run control's "
                "check of its iteration (checkpoint.attach ran before `with RunControl(...)`): "
                "attach checkpoints inside the with block")

    def run(self, data: Iterable, max_epochs: int) -> dict:
        """``trainer.run(data, max_epochs)``; the trackers of :meth:`close_at_end` closed
        however it ends; a NaN stop ends with ``SystemExit(EXIT_NAN)``.  Returns the final
        metrics (rank 0 logs the checkpoints' summary)."""
        if self.position != "after":
            raise FaceIgniteError(
                "attach the run control first: `with RunControl(trainer, ...) as control:` "
                "around the other handlers, then control.run(...) after the block")
        try:
            self.trainer.run(data, max_epochs=max_epochs)
        finally:
            for tracker in self.to_close:  # a tracker closed at COMPLETED says so: `closed`
                if not getattr(tracker, "closed", False):
                    tracker.close()
            stop_loader_workers()  # now, not at exit: a 5 s join per pinned worker there
        if self.nan_seen:  # the NaN guard logged where, and which checkpoint to resume from
            raise SystemExit(EXIT_NAN)
        metrics = dict(self.trainer.state.metrics)
        if self.saver is not None and idist.get_rank() == 0:
            logger.info("done: %s", self.saver.summary(metrics))
        return metrics
