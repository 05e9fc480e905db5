"""What a tracker (ClearML, TensorBoard) records and when: shared by both tracking handlers.

Every scalar goes through Ignite's own ``OutputHandler`` of the tracker, with the trainer's
iteration as the step, so runs compare on one axis whatever the validation interval.  The
trainer's own values are logged from the trainer; each validation's from its evaluator engine,
at that engine's ``COMPLETED``, with ``global_step_from_engine(trainer)``:

============  ==========================================  =====================================
tag           values                                      when
============  ==========================================  =====================================
``train``     the step's 0-d tensors (loss, ce, center,   every ``log_interval`` iterations
              accuracy, ...)                              (the only time they are read)
``lr``        ``lr_<optimizer>``                          with ``train`` (or per epoch)
``epoch``     ``train_*`` epoch means                     trainer ``EPOCH_COMPLETED``
``speed``     ``images_per_sec``, ``skipped_images``      trainer ``EPOCH_COMPLETED``
``holdout``   ``val_accuracy``, ``val_loss``              held-out evaluator ``COMPLETED``
``<target>``  ``<target>_*`` of each verification target  its evaluator's ``COMPLETED``
              (``lfw``, each ``--val_targets``; + the     (the ROC image: trainer
              ROC image ``<target>/roc``)                 ``VERIFICATION_COMPLETED``)
============  ==========================================  =====================================

The series names are those of the run's other tables (``trainer.state.metrics``, the
checkpoints' names, ``metrics.json``): ``<prefix>_<metric>``, the prefix being ``val`` for the
held-out split and the target's name for a verification target.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine
from ignite.handlers.base_logger import BaseLogger, BaseOutputHandler

from faceignite.config import plain_config
from handlers import events

Predicate = Callable[[str], bool]

HOLDOUT = "holdout"  # the tag of the held-out evaluator in ``evaluators``
SERIES_PREFIX = {HOLDOUT: "val"}  # else the tag itself (a verification target's name)
# the trainer's own epoch values (written by handlers.progress), by tag
EPOCH_GROUPS: dict[str, Predicate] = {
    "epoch": lambda k: k.startswith("train_"),
    "speed": lambda k: k in ("images_per_sec", "skipped_images"),
}


def iteration_step(engine: Engine, _event: Any = None) -> int:
    """The global step of every tracked value: the trainer's iteration."""
    return engine.state.iteration


def numbers_only(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (numbers, 0-d tensors) of ``values``; None (a TAR the pairs cannot
    resolve) and anything else are left out."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, numbers.Number):
            out[k] = float(v)
        elif isinstance(v, torch.Tensor) and v.ndim == 0:
            out[k] = v.item()
    return out


def select(metrics: Mapping[str, Any], keep: Predicate) -> dict[str, float]:
    """The numeric entries of ``metrics`` whose name passes ``keep``."""
    return numbers_only({k: v for k, v in metrics.items() if keep(k)})


def evaluator_scalars(tag: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """An evaluator engine's ``state.metrics`` as the run names them: ``accuracy`` of the
    held-out evaluator is ``val_accuracy``; a verification result (an object with
    ``metrics(prefix)``, e.g. :class:`~faceignite.verification.VerificationResult`) gives its
    own ``<target>_*`` values."""
    prefix = SERIES_PREFIX.get(tag, tag)
    named: dict[str, Any] = {}
    for k, v in metrics.items():
        if callable(getattr(v, "metrics", None)):
            named.update(v.metrics(prefix))
        else:
            named[f"{prefix}_{k}"] = v
    return numbers_only(named)


def step_scalars(output: Any) -> dict[str, float]:
    """The 0-d tensors of a step output (``loss``, ``ce``, ``center``, ``accuracy``...)."""
    if not isinstance(output, Mapping):
        return {}
    return {k: v.item() for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim == 0}


def learning_rates(optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, float]:
    """``lr_<name>`` of each optimizer's first parameter group."""
    return {f"lr_{name}": float(opt.param_groups[0]["lr"]) for name, opt in optimizers.items()}


def clean_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options as plain values (str for the rest); keys that look like credentials are dropped."""
    return plain_config(hparams, other=str)


def attach_scalars(tracker: BaseLogger, output_handler: type[BaseOutputHandler], trainer: Engine,
                   log_interval: int,
                   optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                   evaluators: Mapping[str, Engine] | None = None) -> None:
    """Attach ``output_handler`` (the tracker's Ignite ``OutputHandler`` class) for every group
    of the table above.  ``evaluators``: the validations' engines by tag (:data:`HOLDOUT` for
    the held-out one, the target's name for each verification target), as
    ``handlers.holdout.attach`` and ``handlers.verification.attach`` return them.  Attach after
    ``progress`` (its epoch means): Ignite runs the handlers of one event in the order they
    were added."""
    def add(event: Any, tag: str, values: Callable[[], dict[str, float]]) -> None:
        tracker.attach(trainer, output_handler(tag=tag, output_transform=lambda _: values(),
                                               global_step_transform=iteration_step), event)

    every = Events.ITERATION_COMPLETED(every=max(1, log_interval))
    add(every, "train", lambda: step_scalars(trainer.state.output))
    if optimizers:
        add(every, "lr", lambda: learning_rates(optimizers))
    else:
        add(Events.EPOCH_COMPLETED, "lr",
            lambda: select(trainer.state.metrics, lambda k: k.startswith("lr_")))
    for tag, keep in EPOCH_GROUPS.items():
        add(Events.EPOCH_COMPLETED, tag, lambda keep=keep: select(trainer.state.metrics, keep))
    # each validation from its own engine, when it completes, at the trainer's iteration
    at_trainer_iteration = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    for tag, evaluator in (evaluators or {}).items():
        handler = output_handler(
            tag=tag, global_step_transform=at_trainer_iteration,
            output_transform=lambda _, tag=tag, e=evaluator: evaluator_scalars(tag, e.state.metrics))
        tracker.attach(evaluator, handler, Events.COMPLETED)


def attach_figures(trainer: Engine, log_figure: Callable[[str, str, int], None]) -> None:
    """Call ``log_figure(target, png_path, iteration)`` for each ROC figure new since the last
    call.

    The verification handler puts the PNG path of each target's validation in the metric
    ``<target>_roc_figure`` (the figure is drawn after the evaluator engine completed) before
    it fires ``VERIFICATION_COMPLETED``.
    """
    events.register(trainer)
    logged: set[str] = set()

    @trainer.on(events.ValidationEvents.VERIFICATION_COMPLETED)
    def _log_new_figures(engine: Engine) -> None:
        for key, path in sorted(engine.state.metrics.items()):
            if key.endswith("_roc_figure") and isinstance(path, str) and path not in logged:
                logged.add(path)
                log_figure(key[:-len("_roc_figure")], path, engine.state.iteration)
