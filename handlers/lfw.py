"""LFW (or any LFW-format pairs set) verification during training, with a ROC PNG per validation:
the one-target form of :mod:`handlers.verification`."""
from __future__ import annotations

from typing import Callable

from ignite.engine import Engine
from torch import nn

from faceignite.lfw import PairsEvaluator
from faceignite.lfw.targets import TargetSpec
from handlers import verification


def attach(trainer: Engine, model: nn.Module | Callable, lfw_dir: str | None, device,
           image_size: int, *, batch_size: int, every_epochs: int, flip: bool, distance: str,
           pairs_file: str | None = None, every_iterations: int = 0,
           skip_missing: bool = False, output_dir: str | None = None,
           num_workers: int = 0, amp: str = "off", channels_last: bool = False,
           prefix: str = "lfw") -> PairsEvaluator:
    """Validate on the pairs set every ``every_epochs`` epochs, after the last epoch, at the end
    of a run stopped early, and every ``every_iterations`` iterations when given.

    Each validation writes ``<prefix>_accuracy``, ``_accuracy_std``, ``_threshold``,
    ``_val_far1e-3``, ``_val_far1e-2``, ``_auc``, ``_eer`` into ``trainer.state.metrics``, logs
    them in one line, saves ``<output_dir>/roc_<prefix>_epoch<E>_iter<I>.png`` (its path in the
    metric ``<prefix>_roc_figure``) and fires ``ValidationEvents.LFW_COMPLETED``.  The pairs file
    and images are checked now, so a bad ``--lfw`` fails before training.  Returns the evaluator.

    Distributed: attach it in every process; each embeds its share of the images, the metrics
    (computed on the gathered embeddings) are the same everywhere, rank 0 writes the figure.
    """
    target = TargetSpec(prefix, lfw_dir, pairs_file, skip_missing).load()
    evaluators = verification.attach(
        trainer, model, [target], device, image_size, batch_size=batch_size,
        every_epochs=every_epochs, flip=flip, distance=distance,
        every_iterations=every_iterations, output_dir=output_dir, num_workers=num_workers,
        amp=amp, channels_last=channels_last)
    return evaluators[prefix]
