"""Checkpoint files: their names, reading them safely (``weights_only``), and checking
that one fits this run.
"""
from __future__ import annotations

import logging
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Any, Mapping

import torch

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")

FORMAT = "faceignite-checkpoint"
FORMAT_VERSION = 1
ORIGINAL_KEYS = ("epoch", "num_classes", "embedding_dimension", "batch_size_training",
                 "model_state_dict", "model_architecture", "optimizer_model_state_dict",
                 "optimizer_centerloss_state_dict", "learning_rate_scheduler_state_dict")
RESUME_KEYS = ORIGINAL_KEYS + ("criterion_state_dict", "scaler_state_dict", "trainer_state_dict",
                               "rng_state", "split")
# File names written by handlers/checkpoint.py (Ignite's "{prefix}_{name}_{step}..." pattern).
LATEST_PREFIX, BEST_PREFIX, NAME = "training", "best", "checkpoint"
LATEST_RE = re.compile(rf"^{LATEST_PREFIX}_{NAME}_(\d+)\.pt$")
BEST_RE = re.compile(rf"^{BEST_PREFIX}_{NAME}_(\d+)_(\w+)=([-+0-9.eE]+|nan|inf)\.pt$")
# Options a resumed run must share with its checkpoint (name in the checkpoint config, option).
TRAJECTORY_OPTIONS = ("batch_size", "image_size", "seed", "optimizer", "lr_scheduler")


# --------------------------------------------------------------------------- reading safely
def latest_checkpoint(folder: str) -> str | None:
    """The ``training_checkpoint_<iteration>.pt`` with the highest iteration in ``folder``."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := LATEST_RE.match(name))]
    return os.path.join(folder, max(found)[1]) if found else None


def best_checkpoint(folder: str) -> str | None:
    """The ``best_checkpoint_<iteration>_<metric>=<score>.pt`` of ``folder`` with the highest
    iteration (the run's current best; several metrics only after a resume changed
    ``--best_by``), or None."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := BEST_RE.match(name))]
    return os.path.join(folder, max(found)[1]) if found else None


WHICH = ("best", "latest")


def resolve_checkpoint_path(path: str, option: str = "--resume_path",
                            which: str = "latest") -> str:
    """``path`` itself, or for a run folder its ``which`` checkpoint: ``latest`` (the training
    checkpoint of the highest iteration) or ``best`` (:func:`best_checkpoint`; the latest
    when the run has none, e.g. it never validated), said in the log.

    ``option`` is the caller's command-line option, named in the advice of an error."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path) and which == "best":
        best = best_checkpoint(path)
        if best is not None:
            m = BEST_RE.match(os.path.basename(best))
            logger.info("%s %s: the run's best checkpoint, %s (%s %s); --which latest for "
                        "its latest", option, path, os.path.basename(best), m.group(2),
                        m.group(3))
            return best
        latest = latest_checkpoint(path)
        if latest is not None:
            logger.info("%s %s: no best checkpoint (the run did not validate): its latest, %s",
                        option, path, os.path.basename(latest))
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise FaceIgniteError(f"no {LATEST_PREFIX}_{NAME}_<iteration>.pt in folder {path}: "
                                  f"pass a checkpoint file to {option}")
        return latest
    if not os.path.isfile(path):
        raise FaceIgniteError(f"checkpoint not found: {path}")
    return path


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, every failure turned into one clear error.

    A file holding other Python objects than tensors and plain containers (a pickle that could
    run code) is refused without executing anything; a truncated or corrupt file is named.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note about the pickle protocol
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_what(path, exc)
        if refused:
            raise FaceIgniteError(
                f"refusing to load {path}: it holds code or objects that are refused (not loaded, "
                f"for safety): {refused}; faceignite loads weights only (tensors and plain "
                f"containers)") from None
        raise FaceIgniteError(f"{path} is not a readable PyTorch checkpoint (corrupt, or another "
                              f"format): {_first_line(exc)}") from None
    except FileNotFoundError:
        raise FaceIgniteError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise FaceIgniteError(f"checkpoint {path} is a folder, not a file") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        if _looks_like_text(path):
            raise FaceIgniteError(f"{path} is a text file, not a PyTorch checkpoint") from None
        names = _bare_pickle_globals(path)
        if names:  # a plain pickle (not torch's format) that would import code
            raise FaceIgniteError(
                f"refusing to load {path}: it holds code or objects that are refused (not loaded, "
                f"for safety): a bare Python pickle naming {', '.join(names)}; faceignite loads "
                f"weights only (tensors and plain containers)") from None
        raise FaceIgniteError(f"checkpoint {path} is truncated or corrupt "
                              f"({exc.__class__.__name__}: {_first_line(exc) or 'empty file'}); "
                              f"use an earlier checkpoint of its folder") from None


def _looks_like_text(path: str) -> bool:
    """The file's first 4 KiB are non-empty UTF-8 text without NUL bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # (a multi-byte character cut at 4 KiB reads as binary: fine)
    return bool(head) and b"\0" not in head


def _refused_what(path: str, exc: BaseException) -> str:
    """What the weights-only unpickler refused ("" when ``exc`` is not a refusal but corrupt
    data): the globals named in the file (zip format), else torch's reason without its
    boilerplate (which suggests turning the check off), for a global, a call, or a bare pickle."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message (a bare pickle is not a zip)
        names = []
    if names:
        return "Python objects " + ", ".join(names)
    reason = _first_line(exc)
    if any(word in str(exc) for word in ("GLOBAL", "global", "reduce", "build", "BUILD")):
        return reason
    names = _bare_pickle_globals(path)
    if names is None:
        return ""
    return ("a bare Python pickle naming " + ", ".join(names) if names
            else f"a bare Python pickle ({reason})")


def _bare_pickle_globals(path: str) -> list[str] | None:
    """The globals a file that is a plain pickle (protocol 2-5) imports; None for other files."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return None
    if head[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return None
    return _pickle_globals(head)


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of the globals a pickle imports, read with :mod:`pickletools` (which
    parses the opcodes without executing anything); [] when it cannot be parsed."""
    strings: list[str] = []
    memo: dict[int, str] = {}
    found: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(".".join(str(arg).split(" ", 1)))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
                strings.append(memo[arg])
    except Exception:  # noqa: BLE001 - only for the message: a cut or odd pickle
        pass
    return sorted(set(found))


def _first_line(exc: BaseException) -> str:
    """The line of ``exc`` that says what is wrong (torch's advice paragraphs dropped)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if text.lower().startswith("weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("Check the documentation",
                                                                    "Please file an issue"))]
    # torch's advice ("Please use ... add_safe_globals ... if you trust ...") is not repeated
    return lines[0].split(" Please ")[0].split(" Re-running ")[0][:200] if lines else ""


def load_checkpoint(path: str, map_location: Any = "cpu", option: str = "--resume_path",
                    which: str = "latest") -> dict:
    """Read a training checkpoint (a file, or a run folder → its ``which``: latest or best)
    safely; return its dict.

    Raises :class:`FaceIgniteError` for a missing, truncated, corrupt, unsafe or non-faceignite
    file; ``option`` (the caller's command-line option) is named in its advice.  The dict gets
    ``"path"`` (the file read) added.
    """
    path = resolve_checkpoint_path(path, option, which)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict):
        raise FaceIgniteError(f"{path} is not a training checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    missing = [k for k in ("model_state_dict", "model_architecture", "embedding_dimension")
               if k not in ckpt]
    if missing:
        raise FaceIgniteError(f"{path} is not a faceignite training checkpoint: no "
                              f"{', '.join(missing)}")
    ckpt["path"] = path
    return ckpt


# --------------------------------------------------------------------------- compatibility
def check_compatible(ckpt: Mapping, architecture: str | None = None, num_classes: int | None = None,
                     embedding_dim: int | None = None, finetune_hint: bool = True) -> None:
    """Raise :class:`FaceIgniteError` naming every mismatch between ``ckpt`` and this run."""
    wanted = (("architecture", "model_architecture", architecture, "--model"),
              ("number of classes", "num_classes", num_classes, "--dataroot"),
              ("embedding size", "embedding_dimension", embedding_dim, "--embedding_dim"))
    problems = [f"{what} {ckpt.get(key)} in the checkpoint, {value} here ({option})"
                for what, key, value, option in wanted
                if value is not None and ckpt.get(key) is not None and ckpt.get(key) != value]
    if problems:
        hint = ("; --finetune loads its backbone alone" if finetune_hint
                and architecture in (None, ckpt.get("model_architecture")) else "")
        raise FaceIgniteError(f"checkpoint {ckpt.get('path', '')} does not fit this model: "
                              f"{'; '.join(problems)}{hint}")


def check_checkpoint_options(ckpt: Mapping, options: Mapping[str, Any]) -> None:
    """A resumed run keeps the batch size, image size, seed (data order), optimizer, LR schedule:
    ``options`` holds this run's values of :data:`TRAJECTORY_OPTIONS` (by option name)."""
    saved = dict(ckpt.get("config") or {})
    saved.setdefault("batch_size", ckpt.get("batch_size_training"))
    saved.setdefault("image_size", ckpt.get("image_size"))
    problems = [f"--{name} {saved[name]} (checkpoint) vs {options.get(name)} (here)"
                for name in TRAJECTORY_OPTIONS
                if saved.get(name) is not None
                and options.get(name) not in (None, saved[name])]
    if problems:
        raise FaceIgniteError(f"cannot resume {ckpt.get('path', '')} exactly with other options: "
                              f"{'; '.join(problems)}: pass the checkpoint's values (or --finetune "
                              f"to start a new run from its weights)")
