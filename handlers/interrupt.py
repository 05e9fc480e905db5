"""Ctrl-C / SIGTERM / SIGUSR1 during training: finish the iteration, save a checkpoint, say
where, stop.

A second signal aborts at once.  The run ends with :class:`TrainingInterrupted` (a
``KeyboardInterrupt`` carrying the checkpoint path and an exit code: 130 for Ctrl-C,
``faceignite.cli.EXIT_PREEMPTED`` (75) for SIGTERM and SIGUSR1, the pre-emption signals of
schedulers (SLURM ``--signal=USR1@60``), 128 + N for any other signal N), so that nothing written
after ``trainer.run`` mistakes an interrupted run for a finished one.

Distributed: the processes agree (at the agreement points of ``handlers.control.RunControl``,
or standalone (:func:`attach`) an all-reduce every ``sync_every`` iterations and at each epoch
end) so that all stop at the same iteration, after rank 0 saved, whichever received it.  Only
command-line entry points install the handlers (``signals=()`` otherwise).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from faceignite.cli import EXIT_PREEMPTED, PREEMPTION_SIGNALS

logger = logging.getLogger("faceignite")
COMMAND_LINE_SIGNALS = (signal.SIGINT, *PREEMPTION_SIGNALS)
# seconds in which a repeat of the same pre-emption signal is the same one (sent to the process
# group and forwarded by the --nproc_per_node launcher or torchrun's agent), not "abort now"
REPEAT_WINDOW_S = 5.0


def exit_code_of(signum: int) -> int:
    """The exit code of a run stopped by ``signum`` after saving: 75 pre-empted, else 128 + N."""
    return EXIT_PREEMPTED if signum in PREEMPTION_SIGNALS else 128 + signum


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after an interrupted run saved its checkpoint (``checkpoint`` is ``None`` when a
    second signal aborted it first)."""

    def __init__(self, message: str, signum: int, checkpoint: str | None = None):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = exit_code_of(signum)


class GracefulInterrupt:
    """Signal handlers that only raise a flag; the trainer checks it after each iteration."""

    def __init__(self, trainer: Engine, save: Callable[[Engine], str | None],
                 signals: Sequence[int] = COMMAND_LINE_SIGNALS):
        self.trainer, self.save, self.signals = trainer, save, tuple(signals)
        self.received: int | None = None
        self._received_at = 0.0  # time.monotonic() of the first signal
        self.announced = False
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}

    def install(self, _: Engine | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training outside the main thread: Ctrl-C/SIGTERM/SIGUSR1 will not "
                           "checkpoint")
            return
        self.received, self.announced, self._pid = None, False, os.getpid()
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current != self._on_signal:  # not twice (a run started again after a crash)
                self._previous[sig] = current
            signal.signal(sig, self._on_signal)
        names = "/".join(signal.Signals(sig).name for sig in self.signals if sig != signal.SIGINT)
        logger.info("Ctrl-C or %s saves a checkpoint after the current iteration and stops",
                    names or "a signal")

    def restore(self, _: Engine | None = None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, _frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker inherited the handler: the main process acts
        name = signal.Signals(signum).name
        if (signum == self.received and signum in PREEMPTION_SIGNALS
                and time.monotonic() - self._received_at < REPEAT_WINDOW_S):
            return  # the same pre-emption twice: to the process group and forwarded by a launcher
        if self.received is not None:
            self.restore()
            raise TrainingInterrupted(f"aborted by a second {name}: no checkpoint of this "
                                      f"iteration", signum)
        # only the flag: a log line written here could re-enter a log file's write the signal
        # interrupted ("reentrant call inside BufferedWriter"); announce() says it right after
        self.received, self._received_at = signum, time.monotonic()

    def announce(self, _: Engine | None = None) -> None:
        """Log, once, that a signal came (at the end of the iteration it interrupted, or at the
        next validation batch): outside the signal handler."""
        if self.received is not None and not self.announced:
            self.announced = True
            logger.warning("%s: saving a checkpoint after the current iteration (again: abort "
                           "now)", signal.Signals(self.received).name)

    def check(self, engine: Engine) -> None:
        """At the end of an iteration or epoch: save and stop if a signal came (to any process
        of a distributed run: every process calls this at the same points).  Used by
        :func:`attach`; a ``handlers.control.RunControl`` agrees on signals at its own agreement
        points (and calls :meth:`stop` itself)."""
        self.announce()
        signum = self.received
        if idist.get_world_size() > 1:
            agreed = idist.all_reduce(torch.tensor([signum or 0], device=idist.device()), op="MAX")
            signum = int(agreed.item()) or None
        if signum is not None:
            self.stop(engine, signum)

    def guard(self, evaluator: Engine, every: int = 10, what: str = "validation") -> None:
        """Let a signal stop ``evaluator``, a validation that runs inside one of the trainer's
        handlers: at the next batch (one process), or at the next agreement point of the
        validation itself, every ``every`` batches (several processes: one all-reduce there, at
        batches every process has), the validation's result is discarded, the trainer saves
        its checkpoint and the run stops (:meth:`stop`), rather than after the whole
        validation."""
        distributed = idist.get_world_size() > 1
        common = {"batches": 0}

        def started(engine: Engine) -> None:
            if distributed:  # shards may differ by a batch: agree only where all have one
                mine = torch.tensor([engine.state.epoch_length or 0], device=idist.device())
                common["batches"] = int(idist.all_reduce(mine, op="MIN").item())

        def check(engine: Engine) -> None:
            self.announce()
            i = engine.state.iteration
            if distributed:
                if i % max(1, every) or i > common["batches"]:
                    return
                agreed = idist.all_reduce(torch.tensor([self.received or 0],
                                                       device=idist.device()), op="MAX")
                signum = int(agreed.item()) or None
            else:
                signum = self.received
            if signum is not None:
                logger.warning("%s stopped at batch %d of %s by %s: its result is discarded",
                               what, i, engine.state.epoch_length,
                               signal.Signals(signum).name)
                self.stop(self.trainer, signum)  # saves the trainer's state and raises

        evaluator.add_event_handler(Events.STARTED, started)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, check)

    def stop(self, engine: Engine, signum: int) -> None:
        """Save (nothing newer after a NaN loss: the checkpointer refuses) and raise."""
        self.announce()
        path = self.save(engine)
        self.restore()
        saved = (f"checkpoint saved to {path}; resume with --resume_path {path}" if path
                 else "no checkpointer attached, nothing saved")
        raise TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} at epoch {engine.state.epoch} "
            f"iteration {engine.state.iteration}: {saved}", signum, path)


def attach(trainer: Engine, save: Callable[[Engine], str | None],
           signals: Sequence[int] = COMMAND_LINE_SIGNALS,
           sync_every: int = 10) -> GracefulInterrupt:
    """Signals alone, without a :class:`handlers.control.RunControl` (which owns a
    :class:`GracefulInterrupt` of its own and acts on it at its agreement points): while
    ``trainer`` runs, turn ``signals`` into ``save(trainer)`` at the end of the current
    iteration, then :class:`TrainingInterrupted`.  ``save`` returns the path written.

    ``signals=()`` installs nothing (a library call must not take over the process's signals).
    Checked every iteration in one process, every ``sync_every`` iterations (and each epoch end)
    with several, all processes together.
    """
    handler = GracefulInterrupt(trainer, save, signals)
    if signals:
        trainer.add_event_handler(Events.STARTED, handler.install)
        trainer.add_event_handler(Events.COMPLETED, handler.restore)
        trainer.add_event_handler(Events.TERMINATE, handler.restore)
    every = 1 if idist.get_world_size() == 1 else max(1, sync_every)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler.announce)  # a host flag
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), handler.check)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler.check)
    return handler
