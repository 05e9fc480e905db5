"""What a tracker (ClearML, TensorBoard) records and when: shared by both tracking handlers.

Every scalar goes through Ignite's own ``OutputHandler`` of the tracker, with the trainer's
iteration as the step, so runs compare on one axis whatever the validation interval:

============  ==========================================  =====================================
tag           values                                      when
============  ==========================================  =====================================
``train``     the step's 0-d tensors (loss, ce, center,   every ``log_interval`` iterations
              accuracy, ...)                              (the only time they are read)
``lr``        ``lr_<optimizer>``                          with ``train`` (or per epoch)
``epoch``     ``train_*`` epoch means                     ``EPOCH_COMPLETED``
``speed``     ``images_per_sec``, ``skipped_images``      ``EPOCH_COMPLETED``
``holdout``   ``val_*``                                   ``HOLDOUT_COMPLETED``
``<target>``  ``<target>_*`` of each verification target  ``VERIFICATION_COMPLETED``
              (``lfw``, each ``--val_targets``; + the
              ROC image ``<target>/roc``)
============  ==========================================  =====================================
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers.base_logger import BaseLogger, BaseOutputHandler

from faceignite.config import plain_config
from faceignite.verification import FAR_TARGETS, far_label
from handlers import events

Predicate = Callable[[str], bool]

EPOCH_GROUPS: dict[str, Predicate] = {
    "epoch": lambda k: k.startswith("train_"),
    "speed": lambda k: k in ("images_per_sec", "skipped_images"),
}
VALIDATION_GROUPS: dict[Any, tuple[str, Predicate]] = {
    events.ValidationEvents.HOLDOUT_COMPLETED: ("holdout", lambda k: k.startswith("val_")),
}
VERIFICATION_SUFFIXES = frozenset({"accuracy", "accuracy_std", "threshold", "auc", "eer",
                                   *(f"val_far{far_label(f)}" for f in FAR_TARGETS)})


def verification_metrics(name: str) -> Predicate:
    """Exactly target ``name``'s metrics (``lfw`` does not take those of a target ``lfw_x``)."""
    prefix = f"{name}_"
    return lambda k: k.startswith(prefix) and k[len(prefix):] in VERIFICATION_SUFFIXES


def iteration_step(engine: Engine, _event: Any = None) -> int:
    """The global step of every tracked value: the trainer's iteration."""
    return engine.state.iteration


def select(metrics: Mapping[str, Any], keep: Predicate) -> dict[str, float]:
    """The numeric entries (numbers, 0-d tensors) of ``metrics`` whose name passes ``keep``."""
    selected = {}
    for k, v in metrics.items():
        if not keep(k) or isinstance(v, bool):
            continue
        if isinstance(v, numbers.Number):
            selected[k] = float(v)
        elif isinstance(v, torch.Tensor) and v.ndim == 0:
            selected[k] = v.item()
    return selected


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
                   optimizers: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
    """Attach ``output_handler`` (the tracker's Ignite ``OutputHandler`` class) for every group
    of the table above.  Attach after the handlers that write the metrics (``progress``,
    ``holdout``, ``verification``): Ignite runs the handlers of one event in the order they were
    added.  One ``<target>`` tag per verification target attached before (``lfw`` when none)."""
    events.register(trainer)

    def add(event: Any, tag: str, values: Callable[[], dict[str, float]]) -> None:
        handler = output_handler(tag=tag, output_transform=lambda _: values(),
                                 global_step_transform=iteration_step)
        # custom events have no state attribute, so attach directly rather than tracker.attach
        trainer.add_event_handler(event, handler, tracker, event)

    every = Events.ITERATION_COMPLETED(every=max(1, log_interval))
    add(every, "train", lambda: step_scalars(trainer.state.output))
    if optimizers:
        add(every, "lr", lambda: learning_rates(optimizers))
    else:
        add(Events.EPOCH_COMPLETED, "lr",
            lambda: select(trainer.state.metrics, lambda k: k.startswith("lr_")))
    for tag, keep in EPOCH_GROUPS.items():
        add(Events.EPOCH_COMPLETED, tag, lambda keep=keep: select(trainer.state.metrics, keep))
    for event, (tag, keep) in VALIDATION_GROUPS.items():
        add(event, tag, lambda keep=keep: select(trainer.state.metrics, keep))
    for name in events.verification_targets(trainer) or ["lfw"]:
        add(events.ValidationEvents.VERIFICATION_COMPLETED, name,
            lambda keep=verification_metrics(name): select(trainer.state.metrics, keep))


def attach_figures(trainer: Engine, log_figure: Callable[[str, str, int], None]) -> None:
    """Call ``log_figure(target, png_path, iteration)`` for each ROC figure new since the last
    call.

    The verification handler puts the PNG path of each target's validation in the metric
    ``<target>_roc_figure`` before it fires ``VERIFICATION_COMPLETED``.
    """
    events.register(trainer)
    logged: set[str] = set()

    @trainer.on(events.ValidationEvents.VERIFICATION_COMPLETED)
    def _log_new_figures(engine: Engine) -> None:
        for key, path in sorted(engine.state.metrics.items()):
            if key.endswith("_roc_figure") and isinstance(path, str) and path not in logged:
                logged.add(path)
                log_figure(key[:-len("_roc_figure")], path, engine.state.iteration)
