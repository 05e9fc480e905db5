"""TensorBoard tracking on Ignite's ``TensorboardLogger``: the scalars and ROC images of ClearML."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import OutputHandler, TensorboardLogger

from faceignite.data.dataset import read_rgb
from handlers import tracking

logger = logging.getLogger("faceignite")


def attach(trainer: Engine, log_dir: str, *, log_interval: int,
           optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
           hparams: Mapping[str, Any] | None = None,
           evaluators: Mapping[str, Engine] | None = None) -> TensorboardLogger | None:
    """Log the scalars of :mod:`handlers.tracking` (the validations' from their
    ``evaluators``, by tag: ``"holdout"``, each target's name) and each verification target's
    ROC image (``<target>/roc``: ``lfw/roc``, ``cfp_fp/roc`` ...) to ``log_dir``.

    The options ``hparams`` are written once as a text summary (``hparams``); the event file is
    closed when the trainer completes.  View with ``tensorboard --logdir <parent of log_dir>``.
    Distributed: rank 0 logs (its metrics are the run's); the other processes get None.
    """
    if idist.get_rank() != 0:
        return None
    os.makedirs(log_dir, exist_ok=True)
    tb = TensorboardLogger(log_dir=log_dir, flush_secs=30)
    if hparams:
        table = json.dumps(tracking.clean_hparams(hparams), indent=2, default=str)
        tb.writer.add_text("hparams", f"```\n{table}\n```", 0)
    tracking.attach_scalars(tb, OutputHandler, trainer, log_interval, optimizers, evaluators)

    def log_figure(target: str, path: str, step: int) -> None:
        image = read_rgb(path)
        if image is None:
            logger.warning("tensorboard: cannot read ROC figure %s, not logged", path)
            return
        tb.writer.add_image(f"{target}/roc", image, step, dataformats="HWC")

    tracking.attach_figures(trainer, log_figure)
    trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())
    logger.info("tensorboard: logging to %s", log_dir)
    return tb
