"""ClearML tracking on Ignite's ``ClearMLLogger`` that never hangs or stops a training run.

``mode``: ``online`` (a ClearML server), ``offline`` (a session folder under the run's output
folder, uploaded later with ``clearml-task --import-offline-session <zip>``), ``auto`` (online
when a server is configured in ``clearml.conf`` or ``CLEARML_API_*`` variables, else offline),
``off`` (clearml is not even imported).  An unreachable or silent server costs at most
``timeout`` seconds, one warning, and the run goes on offline (or untracked).

A resumed run (same output folder) continues its task: the task id is kept in
``<output_dir>/clearml/task.json``, and the trainer's iteration numbers go on where they stopped.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from handlers import tracking

logger = logging.getLogger("faceignite")

MODES = ("auto", "online", "offline", "off")
_TRUE = ("1", "true", "yes", "on")
TASK_RECORD = os.path.join("clearml", "task.json")  # under the run's output folder


def read_task_record(output_dir: str) -> dict | None:
    """The ``{"id", "mode"}`` of the task an earlier session of this run folder tracked, if any."""
    try:
        with open(os.path.join(output_dir, TASK_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("id"), str) and record.get("mode") in (
        "online", "offline")
    return record if ok else None


def write_task_record(output_dir: str, task_id: str, mode: str) -> None:
    path = os.path.join(output_dir, TASK_RECORD)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"id": task_id, "mode": mode}, f)


def server_configured() -> bool:
    """Credentials for a server in ``CLEARML_API_*``/``CLEARML_AUTH_TOKEN`` or ``clearml.conf``."""
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_AUTH_TOKEN
    from clearml.config import config_obj

    return bool(ENV_AUTH_TOKEN.get() or ENV_ACCESS_KEY.get()
                or config_obj.get("api.credentials.access_key", None))


def api_server() -> str:
    """The configured API server URL (without any user:password part)."""
    from clearml.backend_api.session.session import Session

    host = Session.get_api_server_host()
    url = urllib.parse.urlsplit(host)
    if not url.hostname:
        return host
    return url._replace(netloc=url.hostname + (f":{url.port}" if url.port else "")).geturl()


def probe_server(url: str, timeout: float) -> str | None:
    """``None`` when ``url`` answers HTTP within ``timeout`` s, else why not (no credentials sent).

    Any answer but a 5xx counts (ClearML would retry 5xx for minutes); TLS is not verified here.
    """
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/debug.ping", timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}" if exc.code >= 500 else None
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc)) or type(exc).__name__
    return None


def resolve_mode(mode: str, timeout: float = 10.0) -> tuple[str, str | None]:
    """``(online|offline, warning or None)`` for ``mode`` in auto/online/offline."""
    if mode not in MODES or mode == "off":
        raise ValueError(f"mode must be one of {MODES[:3]}, got {mode!r}")
    if mode == "offline":
        return "offline", None
    if mode == "auto" and os.environ.get("CLEARML_OFFLINE_MODE", "").lower() in _TRUE:
        return "offline", None
    if not server_configured():
        if mode == "auto":
            return "offline", None
        return "offline", ("--clearml online but no ClearML server is configured (run "
                           "`clearml-init` or set CLEARML_API_HOST/CLEARML_API_ACCESS_KEY/"
                           "CLEARML_API_SECRET_KEY)")
    url = api_server()
    reason = probe_server(url, timeout)
    if reason:
        return "offline", f"ClearML server {url} unreachable within {timeout:g} s ({reason})"
    return "online", None


class _ProcessSettings:
    """ClearML keeps its mode in environment variables and class attributes: snapshot them so
    :meth:`restore` leaves the process as it was.  Offline, point ClearML's cache (hence the
    session) into ``folder`` and report from a thread instead of a subprocess
    (``sdk.development.report_use_subprocess``; measured here: the subprocess makes
    ``Task.close`` wait 10 s, and minutes for a second task of the same process)."""

    ENV = ("CLEARML_CACHE_DIR", "CLEARML_OFFLINE_MODE", "TRAINS_OFFLINE_MODE")

    def __init__(self, offline: bool, folder: str) -> None:
        from clearml.backend_interface.task.task import Task as BackendTask
        from clearml.config import config

        self._env = {k: os.environ.get(k) for k in self.ENV}
        self._backend, self._attr = BackendTask, None
        if not offline:
            return
        os.environ["CLEARML_CACHE_DIR"] = folder
        if (config.get("development.report_use_subprocess", None) is None
                and "_report_subprocess_enabled" in vars(BackendTask)):
            self._attr = vars(BackendTask)["_report_subprocess_enabled"]
            BackendTask._report_subprocess_enabled = False

    def restore(self) -> None:
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self._attr is not None:
            self._backend._report_subprocess_enabled = self._attr
            self._attr = None


def _init_task(init: Callable[[], Any], timeout: float) -> tuple[Any, str | None, bool]:
    """``init()`` in a daemon thread, waiting at most ``timeout`` s: (task, error, timed out)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["task"] = init()
        except Exception as exc:  # noqa: BLE001 - any failure: warn and train on
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name="clearml-task-init", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"Task.init did not finish within {timeout:g} s", True
    return result.get("task"), result.get("error"), False


class ClearMLTracking:
    """A run's ClearML task and Ignite logger; :meth:`close` runs when the trainer completes."""

    def __init__(self, clearml_logger: Any, mode: str, owns_task: bool,
                 settings: _ProcessSettings | None,
                 best_checkpoint: Callable[[], str | None] | None,
                 model_name: str, tags: Sequence[str]) -> None:
        self.logger, self.task, self.mode = clearml_logger, clearml_logger.get_task(), mode
        self.owns_task, self._settings = owns_task, settings
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

    def close(self, upload_model: bool = False) -> str | None:
        """Upload the best checkpoint if asked, close the task; the offline zip (or None)."""
        if self.closed:
            return self.session_zip
        self.closed = True
        if upload_model:
            self.upload_best()
        folder = self.offline_folder
        try:
            if self.owns_task:
                self.logger.close()
            else:
                self.logger.clearml_logger.flush()
        except Exception as exc:  # noqa: BLE001 - the run is done: report, never fail it here
            logger.warning("clearml: closing the task failed (%s)", exc)
        finally:
            if self._settings is not None:
                self._settings.restore()
        if folder and os.path.isfile(folder + ".zip"):
            self.session_zip = folder + ".zip"
            logger.info("clearml: offline session %s; upload it with:\n  clearml-task "
                        "--import-offline-session %s", self.session_zip,
                        shlex.quote(self.session_zip))
        return self.session_zip


_last_run: ClearMLTracking | None = None  # closed by the next attach if its training crashed


def _continuing(previous: dict | None, mode: str) -> dict:
    """``Task.init`` arguments that continue the ``previous`` task when it was tracked ``mode``."""
    return {"continue_last_task": previous["id"]} if previous and previous["mode"] == mode else {}


def _start_task(resolved: str, warning: str | None, kwargs: dict, output_dir: str,
                upload_model: bool, init_timeout: float,
                previous: dict | None = None) -> _ProcessSettings | None:
    """Create the task (or continue ``previous``, the run's task when it was tracked the same way):
    online within ``init_timeout`` s, else offline under ``output_dir``.

    None, after one warning, when neither works; a warning is also given for a fallback.
    """
    from clearml import Task

    if resolved == "online":
        settings = _ProcessSettings(offline=False, folder="")

        def init_online() -> Any:
            Task.set_offline(offline_mode=False)  # may reconnect old sessions: inside the bound
            return Task.init(**kwargs, **_continuing(previous, "online"),
                             output_uri=True if upload_model else None)

        task, error, timed_out = _init_task(init_online, init_timeout)
        if task is not None:
            return settings
        settings.restore()
        if timed_out:  # the thread may still create a task: do not start a second one
            logger.warning("clearml: server %s: %s; tracking off for this run (training goes on)",
                           api_server(), error)
            return None
        warning = f"server {api_server()} refused the task ({error})"
    folder = os.path.abspath(os.path.join(output_dir, "clearml"))
    settings = _ProcessSettings(offline=True, folder=folder)
    try:
        Task.set_offline(offline_mode=True)
        Task.init(**kwargs, **_continuing(previous, "offline"))
    except Exception as exc:  # noqa: BLE001 - tracking must not stop training
        settings.restore()
        logger.warning("clearml: %soffline Task.init failed (%s); tracking off for this run "
                       "(training goes on)", f"{warning}; " if warning else "", exc)
        return None
    if warning:
        logger.warning("clearml: %s; tracking offline in %s instead (training goes on)", warning,
                       folder)
    return settings


def attach(trainer: Engine, output_dir: str, *, mode: str = "auto", project: str = "faceignite",
           task_name: str = "faceignite", tags: Sequence[str] = (),
           hparams: Mapping[str, Any] | None = None, log_interval: int = 50,
           optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
           best_checkpoint: Callable[[], str | None] | None = None, upload_model: bool = False,
           timeout: float = 10.0, init_timeout: float = 60.0) -> ClearMLTracking | None:
    """Track the run in ClearML: ``hparams`` (the parsed options), the scalars of
    :mod:`handlers.tracking`, each LFW ROC image and, with ``upload_model``, the file
    ``best_checkpoint()`` when the trainer completes (the task is closed then).

    ``timeout`` bounds the server probe, ``init_timeout`` the online ``Task.init``.  An offline
    session goes to ``<output_dir>/clearml``.  Returns None when ``mode`` is ``off`` (clearml is
    not imported) or when ClearML cannot start (after one warning): training goes on.
    Distributed: rank 0 tracks the run; the other processes get None.
    """
    global _last_run
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
    if _last_run is not None and not _last_run.closed:
        _last_run.close()
    try:
        resolved, warning = resolve_mode(mode, timeout)
    except Exception as exc:  # noqa: BLE001 - e.g. a clearml.conf that does not parse
        resolved, warning = "offline", f"cannot read the ClearML configuration ({exc})"

    owns_task = Task.current_task() is None  # a task made by the user or an agent is reused
    settings = None
    if owns_task:
        kwargs = dict(project_name=project, task_name=task_name, tags=list(tags),
                      reuse_last_task_id=False, auto_connect_frameworks=False,
                      auto_connect_arg_parser=False)
        previous = read_task_record(output_dir)
        settings = _start_task(resolved, warning, kwargs, output_dir, upload_model, init_timeout,
                               previous)
        if settings is None:
            return None

    clearml_logger = ClearMLLogger()  # takes the current task
    task = clearml_logger.get_task()
    mode_now = "offline" if task.is_offline() else "online"
    if owns_task:
        continued = previous is not None and task.id == previous["id"]
        if continued:  # ClearML would shift the iterations: keep the trainer's numbering
            task.set_initial_iteration(0)
            logger.info("clearml: continuing task %s of this run", task.id)
        write_task_record(output_dir, task.id, mode_now)
    if hparams:
        task.connect(tracking.clean_hparams(hparams), name="Args")
    tracking.attach_scalars(clearml_logger, OutputHandler, trainer, log_interval, optimizers)

    def log_figure(path: str, step: int) -> None:
        clearml_logger.report_image(title="lfw", series="roc", iteration=step, local_path=path,
                                    max_image_history=-1)

    tracking.attach_figures(trainer, log_figure)
    run = ClearMLTracking(clearml_logger, mode_now, owns_task,
                          settings, best_checkpoint, f"{task_name}-best", tags)
    trainer.add_event_handler(Events.COMPLETED, lambda _: run.close(upload_model))
    _last_run = run
    where = run.offline_folder or task.get_output_log_web_page()
    logger.info("clearml: %s task %r in project %r: %s", run.mode, task_name, project, where)
    return run
