"""Progress bar and one log line per epoch: losses, accuracy, images/s, learning rates.

Distributed: the epoch statistics are summed over all processes (one all-reduce per epoch), so
they describe the whole batch, and ``images_per_sec`` the whole run; the progress bar and the
iteration log lines are rank 0's."""
from __future__ import annotations

import logging
import time
from typing import Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from faceignite.cli import progress_enabled
from handlers.tracking import learning_rates, step_scalars

logger = logging.getLogger("faceignite")


class EpochStats:
    """Sums the step's scalars on their device (no host sync per step); read once per epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.skipped = 0
        self.started = self.last = time.perf_counter()

    def log_last(self) -> None:
        """Log the last iteration's line when no log line has (set by :func:`attach`)."""

    def update(self, output: Mapping) -> None:
        self.last = time.perf_counter()
        n = int(output.get("batch_size", 0))
        self.images += n
        self.skipped += int(output.get("skipped", 0))
        for k, v in output.items():
            if isinstance(v, torch.Tensor) and v.ndim == 0 and n:
                self.sums[k] = self.sums.get(k, 0) + v.float() * n

    def compute(self) -> dict[str, float]:
        """Means over the epoch's images (of every process, in a distributed run)."""
        seconds = max(self.last - self.started, 1e-9)  # training only, not the validations
        images, skipped, sums = self.images, self.skipped, self.sums
        if idist.get_world_size() > 1:
            images, skipped, sums = self._sum_over_processes()
        stats = {f"train_{k}": (v / max(images, 1)).item() for k, v in sums.items()}
        stats["images_per_sec"] = images / seconds
        stats["skipped_images"] = float(skipped)
        return stats

    def _sum_over_processes(self) -> tuple[int, int, dict[str, torch.Tensor]]:
        keys = sorted(self.sums)  # the same step outputs in every process
        values = [torch.as_tensor(float(self.images)), torch.as_tensor(float(self.skipped))]
        values += [torch.as_tensor(self.sums[k]).detach().cpu() for k in keys]
        total = idist.all_reduce(torch.stack([v.double() for v in values]).to(idist.device()))
        total = total.cpu()
        return int(total[0]), int(total[1]), dict(zip(keys, total[2:]))


def attach(trainer: Engine, optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
           log_interval: int = 0, progress_bar: bool | None = None) -> EpochStats:
    """Attach a progress bar (``progress_bar``; default: when stderr is a terminal) that moves
    every iteration, a log line every ``log_interval`` iterations (0: none) and the per-epoch
    summary line.  A run interrupted (Ctrl-C, SIGTERM) between two log lines still logs the
    line of its last iteration (:meth:`EpochStats.log_last`, called by the run).

    Epoch statistics land in ``trainer.state.metrics`` as ``train_loss``, ``train_ce``,
    ``train_center``, ``train_accuracy``, ``images_per_sec``, ``skipped_images``, ``lr_<name>``.
    """
    stats = EpochStats()
    rank = idist.get_rank()
    if progress_enabled(progress_bar) and rank == 0:
        # no output_transform: reading the loss would sync the GPU every iteration (the loss
        # is in the log lines, at the run's agreement points)
        ProgressBar(persist=False).attach(trainer, event_name=Events.ITERATION_COMPLETED)

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: stats.reset())
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stats.update(e.state.output))
    logged = {"iteration": -1}

    def log_iteration(engine: Engine) -> None:
        out = engine.state.output  # read here only: no host sync in the other steps
        if logged["iteration"] == engine.state.iteration or not isinstance(out, Mapping):
            return
        logged["iteration"] = engine.state.iteration
        scalars = " | ".join(f"{k} {v:.4f}" for k, v in step_scalars(out).items())
        seconds = max(time.perf_counter() - stats.started, 1e-9)
        logger.info("epoch %d iteration %d | %s | %.1f img/s", engine.state.epoch,
                    engine.state.iteration, scalars, stats.images / seconds)

    if log_interval > 0 and rank == 0:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=log_interval), log_iteration)
        stats.log_last = lambda: log_iteration(trainer)  # type: ignore[method-assign]

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_epoch(engine: Engine) -> None:
        values = {**stats.compute(), **learning_rates(optimizers or {})}
        engine.state.metrics.update(values)
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        parts += [f"{k[6:]} {v:.4f}" for k, v in values.items() if k.startswith("train_")]
        parts.append(f"{values['images_per_sec']:.1f} img/s")
        parts += [f"{k} {v:.3g}" for k, v in values.items() if k.startswith("lr_")]
        if values["skipped_images"]:  # of every process
            parts.append(f"skipped {values['skipped_images']:.0f} images (missing, truncated or "
                         "undecodable: each named in the log)")
        logger.info(" | ".join(parts))

    return stats
