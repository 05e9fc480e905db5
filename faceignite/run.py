"""Run set-up shared by experiment files: output folder, logging, seed, device, one-line errors."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from ignite.utils import manual_seed

from faceignite.engine import resolve_device
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")


@dataclass
class Run:
    """Where a run writes (``output_dir``) and what it runs on."""

    name: str
    output_dir: str
    device: torch.device
    cfg: argparse.Namespace


def setup_logging(log_file: str | None = None) -> None:
    """Log lines with time to stderr, and to ``log_file`` when given."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_faceignite", False):
            root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.getLogger("ignite").setLevel(logging.WARNING)  # our handlers log the epoch lines
    for h in handlers:
        h.setFormatter(fmt)
        h._faceignite = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _run_dir(cfg: argparse.Namespace, name: str) -> str:
    """``output_dir/<name>-<time>``, or the resumed checkpoint's folder when resuming."""
    if cfg.resume_path and not cfg.finetune:
        path = os.path.abspath(os.path.expanduser(cfg.resume_path))
        return path if os.path.isdir(path) else os.path.dirname(path)
    return os.path.join(cfg.output_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


@contextlib.contextmanager
def session(cfg: argparse.Namespace, name: str) -> Iterator[Run]:
    """Create the run folder, log to ``run.log`` there, seed everything, pick the device.

    A :class:`FaceIgniteError` inside ends the program with its one-line message (exit code 2).
    """
    run_dir = _run_dir(cfg, name)
    os.makedirs(run_dir, exist_ok=True)
    setup_logging(os.path.join(run_dir, "run.log"))
    manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(vars(cfg), f, indent=2, default=str)
    logger.info("%s: output in %s, device %s", name, run_dir, device)
    try:
        yield Run(name, run_dir, device, cfg)
    except FaceIgniteError as exc:
        logger.error("error: %s", exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:  # handlers.interrupt saved a checkpoint first and says where
        logger.warning("%s", exc or "interrupted")
        raise SystemExit(getattr(exc, "exit_code", 130)) from None
