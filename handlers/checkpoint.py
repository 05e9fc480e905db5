"""Checkpoints on Ignite's ``Checkpoint``: the last ``n_saved`` and the best, written crash-safely.

Files in ``output_dir``: ``training_checkpoint_<iteration>.pt`` (every epoch, every
``save_interval`` iterations, at the end of a run stopped early) and
``best_checkpoint_<iteration>_<metric>=<score>.pt`` (after each validation that beats the best).
Distributed: every process runs the handlers (same decisions, same file names), rank 0 writes.
Only Ignite's public API is used: ``Checkpoint`` (``last_checkpoint``, ``state_dict``,
``load_state_dict``, ``get_default_score_fn``) and a ``DiskSaver`` whose public ``__call__`` and
``remove`` add what durability needs.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from faceignite.checkpoint import BEST_PREFIX, BEST_RE, LATEST_PREFIX, LATEST_RE, NAME
from faceignite.engine import TrainerEvents, register_trainer_events
from faceignite.errors import FaceIgniteError
from faceignite.output_files import write_error
from handlers import events

logger = logging.getLogger("faceignite")


def fsync_folder(path: Path) -> None:
    """Make a rename in ``path`` durable (the folder's entry is on disk too); a no-op where
    folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DurableDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver(atomic=True)``, durable as well as atomic.

    Ignite's atomic save writes a temporary file and renames it, but never fsyncs: after a power
    cut the renamed file may be empty.  Here (public ``__call__``) a new file goes to
    ``.<name>.part`` in the same folder, is flushed and fsynced, renamed over its final name
    (``os.replace``) and the folder is fsynced.  Files ``Checkpoint`` rotates out (public
    ``remove``) are deleted only after the next file is safely on disk.  A crash, a full disk
    or an unpicklable object at any point leaves every earlier checkpoint intact and loadable.
    """

    def __init__(self, dirname: str | Path, **torch_save_kwargs: Any):
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False,
                         **torch_save_kwargs)
        self.to_remove: list[str] = []
        if idist.get_rank() != self.save_on_rank:
            return  # only the writing process touches the folder
        for stale in self.dirname.glob(".*.pt.part"):  # left by a crash mid-write
            with contextlib.suppress(OSError):
                stale.unlink()

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / filename
        tmp = path.with_name(f".{filename}.part")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f, **self.kwargs)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):  # e.g. "no space left on device writing PATH"
                raise FaceIgniteError(f"{write_error(exc, str(path), '--output_dir')}; the "
                                      f"earlier checkpoints in {self.dirname} are intact"
                                      ) from None
            if isinstance(exc, Exception):
                raise FaceIgniteError(f"could not write checkpoint {path} "
                                      f"({exc.__class__.__name__}: {exc}); the earlier "
                                      f"checkpoints in {self.dirname} are intact") from exc
            raise
        fsync_folder(self.dirname)  # the rename itself survives a power cut
        pending, self.to_remove = self.to_remove, []
        for name in pending:
            if name != filename:
                with contextlib.suppress(FileNotFoundError):
                    (self.dirname / name).unlink()

    def remove(self, filename: str) -> None:
        """Deferred until the next checkpoint is on disk (``Checkpoint`` removes first)."""
        if idist.get_rank() == self.save_on_rank:
            self.to_remove.append(filename)


def rotate_as_written(checkpoint: Checkpoint, files: list[tuple[float, str]]) -> None:
    """Make ``checkpoint`` rotate ``files`` (``(priority, file name)``, lowest first) as if it
    had written them, through its public ``state_dict``/``load_state_dict`` pair."""
    (key,) = checkpoint.state_dict()  # Ignite's one entry: the (priority, file name) pairs
    checkpoint.load_state_dict({key: files})


def saved_iteration(path: str | None) -> int | None:
    """The iteration in a ``training_checkpoint_<iteration>.pt`` path, else None."""
    m = LATEST_RE.match(os.path.basename(path)) if path else None
    return int(m.group(1)) if m else None


class Checkpointer:
    """The checkpoint writers of a run: ``latest`` (last ``n_saved``) and ``best`` (or None)."""

    def __init__(self, latest: Checkpoint, best: Checkpoint | None, best_by: str | None):
        self.latest, self.best, self.best_by = latest, best, best_by
        self.adopted = False
        self.poisoned = False  # a loss went NaN (TrainerEvents.NAN_DETECTED): save no more

    def on_nan(self, _: Engine | None = None) -> None:
        self.poisoned = True

    @property
    def last_checkpoint(self) -> str | None:
        """Path of the newest training checkpoint (``None`` before the first)."""
        path = self.latest.last_checkpoint
        return str(path) if path is not None else None

    @property
    def best_checkpoint(self) -> str | None:
        path = self.best.last_checkpoint if self.best is not None else None
        return str(path) if path is not None else None

    def save(self, engine: Engine) -> str | None:
        """Write a training checkpoint of the current iteration now; return its path.

        Never after a NaN loss (``TrainerEvents.NAN_DETECTED``, fired by ``handlers.control``):
        the weights are poisoned, the last good checkpoint stays the newest.
        """
        if self.poisoned:
            return self.last_checkpoint
        self.latest(engine)
        self.share_with_best(engine.state.iteration)
        return self.last_checkpoint  # type: ignore[return-value]

    def share_with_best(self, iteration: int) -> None:
        """When the best checkpoint is of this same ``iteration`` (the epoch's validation was
        the best), make it a hard link to the training checkpoint just written: one copy on
        disk, not two (the training file is the fuller one: it carries the epoch's training
        metrics too).  Where hard links are not supported both copies stay."""
        best, latest = self.best_checkpoint, self.last_checkpoint
        if (best is None or latest is None or idist.get_rank() != self.latest.save_handler.save_on_rank
                or (m := BEST_RE.match(os.path.basename(best))) is None
                or int(m.group(1)) != iteration):
            return
        tmp = os.path.join(os.path.dirname(best), f".{os.path.basename(best)}.link")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.link(latest, tmp)
            os.replace(tmp, best)  # atomic: the best file is always whole
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def summary(self, metrics: Mapping[str, Any] | None = None) -> str:
        """The run's checkpoints in one line: the best's path and metric, and the latest's."""
        parts = []
        best = self.best_checkpoint
        if best is not None:
            m = BEST_RE.match(os.path.basename(best))
            score = m.group(3) if m else (metrics or {}).get(self.best_by)
            parts.append(f"best checkpoint {best} ({self.best_by} {score})")
        if self.last_checkpoint is not None:
            shared = best is not None and os.path.exists(best) and os.path.samefile(
                best, self.last_checkpoint)
            parts.append(f"latest {self.last_checkpoint}" + (" (the same file: hard link)"
                                                              if shared else ""))
        return "; ".join(parts) or "no checkpoint written"

    def save_now(self, engine: Engine) -> str:
        """Like :meth:`save`, unless this iteration is already saved (then its path)."""
        if saved_iteration(self.last_checkpoint) == engine.state.iteration:
            return self.last_checkpoint  # type: ignore[return-value]
        return self.save(engine)  # type: ignore[return-value]

    def save_best(self, engine: Engine) -> None:
        if self.best is not None and self.best_by in engine.state.metrics and not self.poisoned:
            self.best(engine)

    def adopt_existing(self, engine: Engine) -> None:
        """Take over the files of a resumed run folder (up to the resumed iteration), so that
        rotation keeps ``n_saved`` files in all rather than ``n_saved`` more per resume."""
        folder = self.latest.save_handler.dirname
        now = engine.state.iteration
        if self.adopted or not now or not folder.is_dir():
            return
        self.adopted = True
        names = os.listdir(folder)
        latest = sorted((int(m.group(1)), n) for n in names if (m := LATEST_RE.match(n)))
        later = [n for step, n in latest if step > now]
        if later:
            logger.info("checkpoints newer than the resumed iteration %d are left as they are: %s",
                        now, ", ".join(later))
        keep = [(step, n) for step, n in latest if step <= now]
        rotate_as_written(self.latest, keep[-(self.latest.n_saved or len(keep)):])
        if self.best is not None:
            best = sorted((float(m.group(3)), n) for n in names if (m := BEST_RE.match(n))
                          and m.group(2) == self.best_by and int(m.group(1)) <= now)
            rotate_as_written(self.best, best[-(self.best.n_saved or len(best)):])


def attach(trainer: Engine, to_save: Any, output_dir: str, *, n_saved: int,
           save_interval: int = 0, best_by: str | None = None,
           best_event: Any = None, n_best: int = 1) -> Checkpointer:
    """Save ``to_save`` every epoch, every ``save_interval`` iterations (0: off) and at the end
    of a run stopped early (time limit, early stopping); keep the last ``n_saved`` files.

    ``to_save``: one object with ``state_dict()`` (e.g. a
    :class:`~faceignite.checkpoint.TrainingState`, whose keys become the file's top-level keys),
    or a dict of such objects as for Ignite's ``Checkpoint``.  ``best_by``: a metric of
    ``trainer.state.metrics`` (``"lfw_accuracy"``, ``"val_accuracy"``); the best ``n_best``
    files by it are kept, checked at ``best_event`` (default: ``ValidationEvents.VERIFICATION_COMPLETED``
    for ``lfw_*`` metrics, else ``HOLDOUT_COMPLETED``).  Attach it after the validation
    handlers, so epoch checkpoints carry the epoch's metrics.  Returns the :class:`Checkpointer`.
    """
    if not isinstance(to_save, Mapping):
        to_save = {NAME: to_save}
    step = lambda engine, _event: engine.state.iteration  # noqa: E731
    latest = Checkpoint(to_save, DurableDiskSaver(output_dir), filename_prefix=LATEST_PREFIX,
                        n_saved=n_saved, global_step_transform=step)
    best = None
    if best_by:
        best = Checkpoint(to_save, DurableDiskSaver(output_dir), filename_prefix=BEST_PREFIX,
                          score_function=Checkpoint.get_default_score_fn(best_by),
                          score_name=best_by, n_saved=n_best, global_step_transform=step)
    handler = Checkpointer(latest, best, best_by)

    register_trainer_events(trainer)
    trainer.add_event_handler(TrainerEvents.NAN_DETECTED, handler.on_nan)
    trainer.add_event_handler(Events.STARTED, handler.adopt_existing)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler.save)
    if save_interval > 0:
        def save_between_epochs(engine: Engine) -> None:
            if not engine.state.epoch_length or engine.state.iteration % engine.state.epoch_length:
                handler.save(engine)  # the epoch-end save covers the last iteration of an epoch
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=save_interval),
                                  save_between_epochs)
    trainer.add_event_handler(Events.COMPLETED, handler.save_now)
    if best is not None:
        events.register(trainer)
        if best_event is None:
            best_event = (events.ValidationEvents.VERIFICATION_COMPLETED if best_by.startswith("lfw")
                          else events.ValidationEvents.HOLDOUT_COMPLETED)
        trainer.add_event_handler(best_event, handler.save_best)
    return handler
