"""``--config FILE``: option values from a JSON or YAML file (the reader chosen by the extension).

Keys are faceignite's option names, or the keys of the second original system's
``training_certer.json`` / ``training_triplet.json`` (:data:`SECOND_SYSTEM_KEYS`, ``resume``,
``no_cuda``, ``start_epoch``).  Every value goes through the option's type, choices and range
check, as a flag's would; an unknown key is one line naming it and the closest known key.  A
run's own ``config.json`` is a valid file: its ``resume_path`` and ``output_dir`` (and
``config``) are left out, so the rerun is a new run beside it.

    values = read_options_file("training_certer.json", BY_NAME)   # {"lfw": ..., "output_dir": ...}
"""
from __future__ import annotations

import difflib
import json
import logging
import os
from typing import Any, Mapping

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")

# the second system's key -> our option name
SECOND_SYSTEM_KEYS: dict[str, str] = {
    "lfw_dir": "lfw", "lfw_pairs_path": "lfw_pairs", "log_dir": "output_dir",
    "alpha": "center_loss_lr", "wd": "weight_decay", "test_batch_size": "lfw_batch_size",
    "beta1": "adam_beta1", "lr_decay": "adagrad_lr_decay", "gpu_id": "gpus",
}
# keys that are not one option: resume -> --resume_path auto, no_cuda -> --device cpu,
# start_epoch -> ignored (epochs are counted from the checkpoint)
SPECIAL_KEYS = ("resume", "no_cuda", "start_epoch")
# what a run's own config.json holds that a rerun must not take over
RUN_ONLY_KEYS = ("resume_path", "output_dir", "config")
EXTENSIONS = (".json", ".yaml", ".yml")


def read_mapping(path: str) -> dict[str, Any]:
    """The file's top-level object (``{key: value}``); one-line error for a missing, empty,
    non-JSON/YAML or non-object file.  A UTF-8 byte-order mark is accepted."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise FaceIgniteError(f"--config {path}: unknown extension {ext or '(none)'!r}; use a "
                              f".json, .yaml or .yml file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FaceIgniteError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise FaceIgniteError(f"--config {path}: a folder, not a file") from None
    except OSError as exc:
        raise FaceIgniteError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # Windows editors write a byte-order mark
    except UnicodeDecodeError as exc:
        raise FaceIgniteError(f"--config {path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise FaceIgniteError(f"--config {path}: the file is empty; write an object of option "
                              f"names and values, e.g. {{\"epochs\": 50}}")
    if ext == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaceIgniteError(f"--config {path} line {exc.lineno} column {exc.colno}: not "
                                  f"valid JSON ({exc.msg})") from None
    else:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise FaceIgniteError(f"--config {path}{where}: not valid YAML ({problem})") from None
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
        raise FaceIgniteError(f"--config {path} holds {kind}, not an object of option names and "
                              f"values (e.g. {{\"epochs\": 50}})")
    return {str(k): v for k, v in value.items()}


def is_run_config(mapping: Mapping[str, Any]) -> bool:
    """A run's own ``config.json`` (every option written out), not a file a person wrote."""
    return "config" in mapping or {"resume_path", "finetune", "output_dir"} <= set(mapping)


def closest_key(key: str, known: list[str]) -> str:
    """The known key most like ``key`` (difflib's ratio)."""
    return (difflib.get_close_matches(key, known, n=1, cutoff=0.0) or known[:1])[0]


def convert(option: Any, value: Any) -> Any:
    """``value`` as ``option`` takes it, or raise ``ValueError`` saying what is wrong: the same
    type, choices and range checks as the flag (a string goes through the flag's own type)."""
    if option.action == "store_true":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if option.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if option.nargs == "+" and not items:
            raise ValueError("must hold at least one value")
        value = [_scalar(option, v) for v in items]
    else:
        value = _scalar(option, value)
    if option.check is not None:
        problem = option.check(value)
        if problem:
            raise ValueError(problem)
    return value


def _scalar(option: Any, value: Any) -> Any:
    kind = option.type or str
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ValueError(f"must be {_kind_name(kind)}, got {json.dumps(value)}")
    if isinstance(value, str):
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {_kind_name(kind)}, got {value!r}") from None
    elif kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"must be a whole number, got {value}")
        value = int(value)
    elif kind is float:
        value = float(value)
    elif kind is str:
        value = str(value)
    if option.choices is not None and value not in option.choices:
        raise ValueError(f"must be one of {', '.join(map(str, option.choices))}, got {value!r}")
    return value


def _kind_name(kind: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string"}.get(kind, "a value")


def read_options_file(path: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The option values of the file at ``path`` (``{option name: value}``), checked against
    ``options`` (name -> :class:`faceignite.config.Option`).  ``null`` leaves an option at its
    default.  Raises a one-line :class:`FaceIgniteError` naming the file and the key."""
    mapping = read_mapping(path)
    run_config = is_run_config(mapping)
    known = sorted(set(options) | set(SECOND_SYSTEM_KEYS) | set(SPECIAL_KEYS))
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if run_config and key in RUN_ONLY_KEYS:
            continue  # a rerun is a new run: give --output_dir / --resume_path to change that
        if key not in options and key not in SECOND_SYSTEM_KEYS and key not in SPECIAL_KEYS:
            raise FaceIgniteError(f"--config {path}: unknown key {key!r}; the closest known key "
                                  f"is {closest_key(key, known)!r}")
        if value is None:
            continue
        where = f"--config {path}: {key}"
        if key in SPECIAL_KEYS:
            if not isinstance(value, bool) and key != "start_epoch":
                raise FaceIgniteError(f"{where} must be true or false, got {json.dumps(value)}")
            if key == "resume" and value:
                values["resume_path"] = "auto"
            elif key == "no_cuda" and value:
                values["device"] = "cpu"
            elif key == "start_epoch":
                logger.warning("%s %s ignored: epochs are counted from the checkpoint "
                               "(resume: true continues from the newest one)", where, value)
            continue
        name = SECOND_SYSTEM_KEYS.get(key, key)
        try:
            values[name] = convert(options[name], value)
        except ValueError as exc:
            raise FaceIgniteError(f"{where} (--{name}) {exc}") from None
    return values
