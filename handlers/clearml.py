"""ClearML tracking as an Ignite handler: the scalars of :mod:`handlers.tracking` through Ignite's
``ClearMLLogger``/``OutputHandler``, the parsed options, each verification target's ROC image
and, on request, the best checkpoint.  Starting the task (server probe, time-limited ``Task.init``, offline session
in the run folder, a resumed run continuing its task) is
:mod:`faceignite.tracking.clearml_session`'s job.

``mode``: ``online``, ``offline``, ``auto`` or ``off`` (clearml is not even imported).  An
unreachable or silent server costs at most ``timeout`` + ``init_timeout`` seconds and one
warning; the run goes on offline (or untracked).
"""
from __future__ import annotations

import logging
import os
import shlex
from typing import Any, Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from faceignite.tracking.clearml_session import (MODES, drop_inherited_master, no_frameworks,
                                                start_task)
from handlers import tracking

logger = logging.getLogger("faceignite")


class ClearMLTracking:
    """A run's ClearML task and Ignite logger.  :meth:`close` (idempotent) uploads the best
    checkpoint if asked and closes the task; it runs on ``COMPLETED``, and the recipe calls it in
    a ``finally`` for the runs that end otherwise (NaN stop, exception)."""

    def __init__(self, clearml_logger: Any, mode: str, owns_task: bool,
                 best_checkpoint: Callable[[], str | None] | None = None,
                 model_name: str = "faceignite-best", tags: Sequence[str] = (),
                 upload_model: bool = False) -> None:
        self.logger, self.task, self.mode = clearml_logger, clearml_logger.get_task(), mode
        self.owns_task, self.upload_model = owns_task, upload_model
        self.best_checkpoint, self.model_name, self.tags = best_checkpoint, model_name, list(tags)
        self.session_zip: str | None = None
        self.closed = False

    @property
    def offline_folder(self) -> str | None:
        folder = self.task.get_offline_mode_folder() if self.mode == "offline" else None
        return str(folder) if folder else None

    def upload_best(self) -> str | None:
        """Store the best checkpoint with the task: an output model online, an artifact offline
        (clearml 2.1's ``OutputModel`` fails offline); its path, or None.  The file stays."""
        path = self.best_checkpoint() if self.best_checkpoint else None
        if not path or not os.path.isfile(path):
            logger.warning("clearml: no best checkpoint to upload")
            return None
        from clearml import OutputModel

        try:
            if self.mode == "online":
                model = OutputModel(task=self.task, name=self.model_name, framework="PyTorch",
                                    tags=self.tags)
                model.update_weights(weights_filename=path, auto_delete_file=False)
                what = f"output model {self.model_name!r}"
            else:
                self.task.upload_artifact("best_checkpoint", artifact_object=path,
                                          wait_on_upload=True)
                what = "artifact 'best_checkpoint'"
        except Exception as exc:  # noqa: BLE001 - the checkpoint stays on disk either way
            logger.warning("clearml: uploading %s failed (%s); the file is kept", path, exc)
            return None
        logger.info("clearml: best checkpoint %s stored as %s", path, what)
        return path

    def close(self, upload_model: bool | None = None) -> str | None:
        """Upload the best checkpoint (``upload_model``, default: as attached), close the task
        (flush only, when the task is the user's); the offline session zip, or None."""
        if self.closed:
            return self.session_zip
        self.closed = True
        if self.upload_model if upload_model is None else upload_model:
            self.upload_best()
        folder = self.offline_folder
        try:
            if self.owns_task:
                self.logger.close()
            else:
                self.logger.clearml_logger.flush()
        except Exception as exc:  # noqa: BLE001 - the run is done: report, never fail it here
            logger.warning("clearml: closing the task failed (%s)", exc)
        if folder and os.path.isfile(folder + ".zip"):
            self.session_zip = folder + ".zip"
            logger.info("clearml: offline session %s; upload it with:\n  clearml-task "
                        "--import-offline-session %s", self.session_zip,
                        shlex.quote(self.session_zip))
        return self.session_zip


def attach(trainer: Engine, output_dir: str, *, mode: str = "auto", project: str = "faceignite",
           task_name: str = "faceignite", tags: Sequence[str] = (),
           hparams: Mapping[str, Any] | None = None, log_interval: int = 50,
           optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
           best_checkpoint: Callable[[], str | None] | None = None, upload_model: bool = False,
           timeout: float = 10.0, init_timeout: float = 60.0,
           store_diff: bool = False,
           evaluators: Mapping[str, Engine] | None = None) -> ClearMLTracking | None:
    """Track the run in ClearML: ``hparams`` (the parsed options), the scalars of
    :mod:`handlers.tracking` (the validations' from their ``evaluators``, by tag:
    ``"holdout"``, each target's name), each verification target's ROC image (title: the
    target) and, with ``upload_model``, the file ``best_checkpoint()`` when the run closes.

    The task stores nothing of the machine: no environment variables, and no code (git
    repository, commit, uncommitted diff, script) unless ``store_diff`` (``--clearml_store_diff``:
    an uncommitted file may hold a secret).

    ``timeout`` (s) bounds the server probe, ``init_timeout`` (s) the online ``Task.init``.  An
    offline session goes to ``<output_dir>/clearml``.  A task that already exists in the process
    (made by the user or an agent) is reported to and left open.  Returns None when ``mode`` is
    ``off`` (clearml is not imported) or when ClearML cannot start (after one warning): training
    goes on.  Distributed: rank 0 tracks the run; the other processes get None.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "off" or idist.get_rank() != 0:
        return None
    try:
        from clearml import Task
        from ignite.handlers.clearml_logger import ClearMLLogger, OutputHandler
    except ImportError:
        logger.warning("clearml: not installed (pip install clearml); tracking off")
        return None

    drop_inherited_master()  # before ClearML looks for a task of its own
    owns_task = Task.current_task() is None
    if owns_task:
        started = start_task(mode, output_dir, dict(
            project_name=project, task_name=task_name, tags=list(tags), reuse_last_task_id=False,
            auto_connect_frameworks=no_frameworks(detect_repository=store_diff),
            auto_connect_arg_parser=False),
            timeout=timeout, init_timeout=init_timeout, upload_model=upload_model)
        if started is None:
            return None
    clearml_logger = ClearMLLogger()  # takes the current task
    task = clearml_logger.get_task()
    if hparams:
        task.connect(tracking.clean_hparams(hparams), name="Args")
    tracking.attach_scalars(clearml_logger, OutputHandler, trainer, log_interval, optimizers,
                            evaluators)

    def log_figure(target: str, path: str, step: int) -> None:
        clearml_logger.report_image(title=target, series="roc", iteration=step, local_path=path,
                                    max_image_history=-1)

    tracking.attach_figures(trainer, log_figure)
    run = ClearMLTracking(clearml_logger, "offline" if task.is_offline() else "online", owns_task,
                          best_checkpoint, f"{task_name}-best", tags, upload_model)
    trainer.add_event_handler(Events.COMPLETED, lambda _: run.close())
    where = run.offline_folder or task.get_output_log_web_page()
    logger.info("clearml: %s task %r in project %r: %s", run.mode, task_name, project, where)
    return run
