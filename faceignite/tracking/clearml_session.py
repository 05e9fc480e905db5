"""Starting a ClearML task that never hangs a training run: the server probe, the time-limited
``Task.init``, offline sessions in the run folder and the task record that lets a resumed run
continue its task.  ClearML is imported only inside the functions that need it.

Modes: ``online`` (a ClearML server), ``offline`` (a session folder under the run's output
folder, uploaded later with ``clearml-task --import-offline-session <zip>``), ``auto`` (online
when a server is configured and answers, else offline).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import urllib.parse
from typing import Any, Callable, Iterator, Mapping

logger = logging.getLogger("faceignite")

MODES = ("auto", "online", "offline", "off")
TASK_RECORD = os.path.join("clearml", "task.json")  # under the run's output folder


# -- the task record: a resumed run (same folder) continues its task
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


# -- the server
def server_configured() -> bool:
    """Credentials for a server in ``CLEARML_API_*``/``CLEARML_AUTH_TOKEN`` or ``clearml.conf``."""
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_AUTH_TOKEN
    from clearml.config import config_obj

    return bool(ENV_AUTH_TOKEN.get() or ENV_ACCESS_KEY.get()
                or config_obj.get("api.credentials.access_key", None))


def offline_by_configuration() -> bool:
    """ClearML's own offline switch: ``CLEARML_OFFLINE_MODE`` (parsed by ClearML)."""
    from clearml.backend_api.session.defs import ENV_OFFLINE_MODE

    return bool(ENV_OFFLINE_MODE.get())


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

    The request goes through ClearML's own HTTP session (``get_http_session_with_retry``, no
    retry): its TLS settings are ClearML's — ``CLEARML_API_HOST_VERIFY_CERT`` or
    ``api.verify_certificate`` in ``clearml.conf``: verified by default, off, or a CA bundle
    path (as for every request of ClearML's, a ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the
    environment takes precedence: requests' rule); an untrusted certificate is a reason.  Any
    answer but a 5xx counts (ClearML would retry 5xx for minutes).
    """
    import requests
    from clearml.backend_api.utils import get_http_session_with_retry

    try:
        with get_http_session_with_retry(total=0) as http:
            answer = http.get(f"{url.rstrip('/')}/debug.ping", timeout=timeout,
                              allow_redirects=False)
    except (requests.RequestException, OSError, ValueError) as exc:
        return short_reason(exc)
    return f"HTTP {answer.status_code}" if answer.status_code >= 500 else None


def short_reason(exc: BaseException) -> str:
    """The cause of a failed request in a few words (``[Errno 111] Connection refused``,
    ``[SSL: CERTIFICATE_VERIFY_FAILED] ...``), not urllib3's nested retry message."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    inner = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError: its cause
    text = str(inner.args[-1] if inner.args else inner) or type(inner).__name__
    return re.sub(r"^\w+\(.*?\): ", "", text)  # "HTTPConnection(host=..., port=...): "


def resolve_mode(mode: str, timeout: float = 10.0) -> tuple[str, str | None]:
    """``(online|offline, warning or None)`` for ``mode`` in auto/online/offline; ``timeout``
    (seconds) bounds the server probe."""
    if mode not in MODES or mode == "off":
        raise ValueError(f"mode must be one of {MODES[:3]}, got {mode!r}")
    if mode == "offline":
        return "offline", None
    if mode == "auto" and offline_by_configuration():
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


# -- what the task stores
# every framework binding ``Task.init(auto_connect_frameworks=...)`` knows (clearml 2.x): a key
# left out of the dict counts as on, so all are named
FRAMEWORKS = ("hydra", "scikit", "joblib", "matplotlib", "tensorflow", "tensorboard",
              "tfdefines", "pytorch", "megengine", "xgboost", "catboost", "fastai", "lightgbm",
              "gradio")
NO_ENVIRONMENT = "FACEIGNITE_LOGS_NO_ENVIRONMENT_VARIABLE"  # a variable name nobody sets


def no_frameworks(detect_repository: bool = False) -> dict[str, bool]:
    """``auto_connect_frameworks`` for ``Task.init``: no framework bound; the git repository,
    commit and uncommitted diff (and a standalone script's text) stored only with
    ``detect_repository``."""
    return {**dict.fromkeys(FRAMEWORKS, False), "detect_repository": detect_repository}


@contextlib.contextmanager
def _no_environment() -> Iterator[None]:
    """While a task starts: ClearML logs the environment variables named in
    ``CLEARML_LOG_ENVIRONMENT`` (else ``sdk.development.log_os_environments``); name one nobody
    sets, so that none is stored, whatever the configuration says."""
    before = os.environ.get("CLEARML_LOG_ENVIRONMENT")
    os.environ["CLEARML_LOG_ENVIRONMENT"] = NO_ENVIRONMENT
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CLEARML_LOG_ENVIRONMENT", None)
        else:
            os.environ["CLEARML_LOG_ENVIRONMENT"] = before


# -- the task
def call_with_timeout(fn: Callable[[], Any], timeout: float,
                      name: str = "clearml-task-init") -> tuple[Any, str | None, bool]:
    """``fn()`` in a daemon thread, waiting at most ``timeout`` s: (result, error, timed out).

    A call still running after ``timeout`` is left to finish (or hang) in its thread."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - any failure: reported to the caller
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"did not finish within {timeout:g} s", True
    return result.get("value"), result.get("error"), False


@contextlib.contextmanager
def _cache_dir(folder: str) -> Iterator[None]:
    """``CLEARML_CACHE_DIR=folder`` while a task starts: an offline task takes its session folder
    (``<cache>/offline/<id>``) from it once, when created, and keeps it; the variable is then
    put back so that nothing else of ClearML in this process moves."""
    before = os.environ.get("CLEARML_CACHE_DIR")
    os.environ["CLEARML_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CLEARML_CACHE_DIR", None)
        else:
            os.environ["CLEARML_CACHE_DIR"] = before


def _report_from_threads() -> None:
    """Offline sessions report from threads rather than a subprocess, unless ``clearml.conf``
    sets ``sdk.development.report_use_subprocess``.

    Why: with the subprocess (ClearML's default on Linux) ``Task.close`` waits about 10 s, and
    minutes for a second task of the same process (measured with clearml 1.16-2.1.12).  ClearML
    offers no call for it: this sets the private class attribute its config key fills
    (``clearml.backend_interface.task.task.Task._report_subprocess_enabled``, clearml 2.1.12),
    for the rest of the process; skipped when the attribute is gone.
    """
    from clearml.backend_interface.task.task import Task as BackendTask
    from clearml.config import config

    if (config.get("development.report_use_subprocess", None) is None
            and "_report_subprocess_enabled" in vars(BackendTask)):
        BackendTask._report_subprocess_enabled = False


def drop_inherited_master() -> None:
    """ClearML marks the process that started a task in ``CLEARML_PROC_MASTER_ID``
    (``pid:task id``); a process started from it (a test runner, a notebook or a script that
    launches this command) inherits the mark, and its ``Task.init`` then returns a stub whose id
    is no string.  A faceignite run is its own task: a mark of another process is dropped."""
    for name in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
        pid = os.environ.get(name, "").partition(":")[0]
        if pid and pid != str(os.getpid()):
            os.environ.pop(name)


def _continuing(previous: Mapping | None, mode: str) -> dict:
    """``Task.init`` arguments that continue the ``previous`` task when it was tracked ``mode``."""
    return {"continue_last_task": previous["id"]} if previous and previous["mode"] == mode else {}


def start_task(mode: str, output_dir: str, init_kwargs: Mapping[str, Any], *,
               timeout: float = 10.0, init_timeout: float = 60.0,
               upload_model: bool = False) -> tuple[Any, str] | None:
    """Start (or continue) the run's ClearML task: ``(task, "online"|"offline")``, or None after
    one warning when ClearML cannot start (training goes on untracked).

    ``mode`` auto/online/offline (:func:`resolve_mode`, the probe bounded by ``timeout`` s);
    online, ``Task.init(**init_kwargs)`` runs in a thread bounded by ``init_timeout`` s, and a
    refusal falls back to offline with one warning; offline, the session goes to
    ``<output_dir>/clearml/offline/<task id>`` (zipped when the task closes).  The task recorded
    in ``<output_dir>/clearml/task.json`` is continued when it was tracked the same way, and the
    record is rewritten.
    """
    from clearml import Task

    drop_inherited_master()
    try:
        resolved, warning = resolve_mode(mode, timeout)
    except Exception as exc:  # noqa: BLE001 - e.g. a clearml.conf that does not parse
        resolved, warning = "offline", f"cannot read the ClearML configuration ({exc})"
    previous = read_task_record(output_dir)
    task = None
    if resolved == "online":
        def init_online() -> Any:
            Task.set_offline(offline_mode=False)  # may reconnect old sessions: inside the bound
            with _no_environment():
                return Task.init(**init_kwargs, **_continuing(previous, "online"),
                                 output_uri=True if upload_model else None)

        task, error, timed_out = call_with_timeout(init_online, init_timeout)
        if timed_out:  # the thread may still create a task: do not start a second one
            logger.warning("clearml: server %s: Task.init %s; tracking off for this run "
                           "(training goes on)", api_server(), error)
            return None
        if task is None:
            warning = f"server {api_server()} refused the task ({error})"
    if task is None:
        folder = os.path.abspath(os.path.join(output_dir, "clearml"))
        try:
            _report_from_threads()
            Task.set_offline(offline_mode=True)
            with _cache_dir(folder), _no_environment():
                task = Task.init(**init_kwargs, **_continuing(previous, "offline"))
                task.get_offline_mode_folder()  # fixed now, under ``folder``
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            logger.warning("clearml: %soffline Task.init failed (%s); tracking off for this run "
                           "(training goes on)", f"{warning}; " if warning else "", exc)
            return None
        if warning:
            logger.warning("clearml: %s; tracking offline in %s instead (training goes on)",
                           warning, folder)
    mode_now = "offline" if task.is_offline() else "online"
    if previous is not None and task.id == previous["id"]:
        task.set_initial_iteration(0)  # ClearML would shift the iterations: keep the trainer's
        logger.info("clearml: continuing task %s of this run", task.id)
    write_task_record(output_dir, task.id, mode_now)
    return task, mode_now
