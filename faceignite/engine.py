"""The trainer engine (its step function), the stop agreement of several processes, and the
held-out evaluator.  Device, precision and DDP helpers live in :mod:`faceignite.runtime`."""
from __future__ import annotations

from typing import Iterable, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, EventEnum, Events
from torch import nn

from faceignite.losses.protocol import AdjustsGradients, Classifying
from faceignite.runtime import (AMP_DTYPES, auto_modules, autocast_context,  # noqa: F401
                                broadcast_buffers, make_grad_scaler, prepare_images,
                                resolve_device, to_channels_last, unwrap)


class TrainerEvents(EventEnum):
    """Events of the trainer itself (registered by :func:`create_trainer`).

    ``NAN_DETECTED``: a training loss went NaN/inf (fired by the NaN guard of
    ``handlers.control``, and by :func:`stop_together` in the processes that learn it from
    another); the weights are poisoned from here on: handlers that save stop saving.
    """

    NAN_DETECTED = "nan_detected"


def register_trainer_events(trainer: Engine) -> None:
    """Make ``trainer`` accept :class:`TrainerEvents` (idempotent)."""
    if TrainerEvents.NAN_DETECTED not in trainer._allowed_events:
        trainer.register_events(*TrainerEvents)


def create_trainer(model: nn.Module, criterion: nn.Module,
                   optimizers: Mapping[str, torch.optim.Optimizer], device: torch.device,
                   amp: str = "off", channels_last: bool = False,
                   scaler: torch.amp.GradScaler | None = None,
                   compile_model: bool = False) -> Engine:
    """An Ignite trainer whose step computes ``criterion(model(x), y)`` and steps every optimizer.

    ``criterion`` follows :class:`faceignite.losses.Criterion`: a dict with ``loss`` (and e.g.
    ``ce``, ``center``, ``logits``); when it :class:`~faceignite.losses.AdjustsGradients`, its
    ``before_optimizer_step()`` runs between backward and the optimizer steps.  The step returns
    detached tensors — total and component losses, batch accuracy, batch size, skipped images —
    so nothing synchronises with the GPU until a handler reads them.

    ``scaler``: the fp16 GradScaler (give it, and the same one to the checkpoint's
    ``TrainingState``; by default one of :func:`make_grad_scaler`).  In a distributed run pass
    the modules of :func:`~faceignite.runtime.auto_modules`: each process steps on its share of
    the batch, DDP averages the gradients, and rank 0's buffers are copied to all after the
    step.  ``channels_last`` sends the images in channels_last format; convert the model's
    weights once before (:func:`~faceignite.runtime.to_channels_last`, before DDP wrapping).
    ``compile_model`` runs the model's forward through ``torch.compile`` (``model`` itself, its
    ``state_dict`` and the evaluators stay uncompiled).
    """
    scaler = scaler if scaler is not None else make_grad_scaler(device, amp)
    forward = torch.compile(model) if compile_model else model
    plain_criterion = unwrap(criterion)  # DDP hides the criterion's own methods
    adjust = plain_criterion if isinstance(plain_criterion, AdjustsGradients) else None
    distributed = idist.get_world_size() > 1
    # Partial FC: every process calls the criterion every step (it all-gathers), rows or not
    collective = bool(getattr(plain_criterion, "collective", False))

    def step(engine: Engine, batch) -> dict[str, torch.Tensor]:
        images, labels, skipped = batch
        if labels.numel() == 0 and not collective:  # every image of the batch failed to decode
            return {"loss": torch.zeros((), device=device), "batch_size": 0, "skipped": skipped}
        model.train()
        criterion.train()
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, amp):
            if labels.numel() == 0:  # collective: take part with no rows (zero contribution)
                embeddings = _no_rows(model, device)
                labels = labels.long()
            else:
                embeddings = forward(prepare_images(images, device, channels_last))
            out = criterion(embeddings, labels)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        if adjust is not None:
            adjust.before_optimizer_step()
        for opt in optimizers.values():
            scaler.step(opt)
        scaler.update()
        if distributed:
            broadcast_buffers(model)
            broadcast_buffers(criterion)
        result = {k: v.detach() for k, v in out.items() if k != "logits" and v.ndim == 0}
        if "logits" in out:
            result["accuracy"] = (out["logits"].detach().argmax(1) == labels).float().mean()
        result["batch_size"] = labels.numel()
        result["skipped"] = skipped
        return result

    trainer = Engine(step)
    register_trainer_events(trainer)

    from faceignite.data.sampler import follow_trainer  # here: faceignite.data imports lfw,
    # which imports this module (an upward import another change removes)
    follow_trainer(trainer)  # the sampler keeps the epoch and position a checkpoint saves

    return trainer


def _no_rows(model: nn.Module, device: torch.device) -> torch.Tensor:
    """A zero-row embedding batch (0 x ``embedding_dim``) for a collective criterion's step."""
    return torch.zeros(0, unwrap(model).embedding_dim, device=device, requires_grad=True)


STOP_CODES = {False: 0, True: 1, "skip_completed": 2}


def stop_together(trainer: Engine, every: Iterable[int] = (1,)) -> None:
    """Several processes: when one process stops the trainer (NaN loss, ``--max_time``, early
    stopping, a hook), stop them all at the same point, rather than leave the others waiting for
    it in the next all-reduce; a NaN seen by one fires ``TrainerEvents.NAN_DETECTED`` in all.

    One small all-reduce (and one host read) at each multiple of an interval in ``every`` and
    at each epoch end — nothing in between: a handler that stops the trainer between those
    points must decide the same in every process (``handlers.control.StopCheck`` agrees on NaN,
    time limit and signals itself).  Attach it after every other ``ITERATION_COMPLETED`` and
    ``EPOCH_COMPLETED`` handler (:func:`handlers.standard.attach_handlers` does).  A no-op in a
    single process.
    """
    if idist.get_world_size() == 1:
        return
    register_trainer_events(trainer)
    every = sorted({int(k) for k in every if k and k > 0}) or [1]
    seen = {"nan": False}
    trainer.add_event_handler(TrainerEvents.NAN_DETECTED, lambda _: seen.update(nan=True))

    def _agree_to_stop(engine: Engine) -> None:
        mine = torch.tensor([STOP_CODES.get(engine.should_terminate, 1), int(seen["nan"])])
        code, nan = idist.all_reduce(mine.to(idist.device()), op="MAX").tolist()
        if nan and not seen["nan"]:  # the all-reduced gradients carried it everywhere
            engine.fire_event(TrainerEvents.NAN_DETECTED)
        if code and STOP_CODES.get(engine.should_terminate, 1) != code:
            engine.terminate(skip_completed=code == 2)

    at_point = Events.ITERATION_COMPLETED(event_filter=lambda _, i: any(i % k == 0 for k in every))
    trainer.add_event_handler(at_point | Events.EPOCH_COMPLETED, _agree_to_stop)


def create_evaluator(model: nn.Module, criterion: Classifying, device: torch.device,
                     metrics: Mapping | None = None, amp: str = "off",
                     channels_last: bool = False) -> Engine:
    """An evaluator whose output is ``(logits, labels)`` for Ignite's Accuracy and Loss metrics;
    ``criterion`` must be :class:`~faceignite.losses.Classifying`."""
    if not isinstance(criterion, Classifying):
        raise TypeError(f"{type(criterion).__name__} has no logits(): no held-out accuracy")

    @torch.no_grad()
    def step(engine: Engine, batch):
        images, labels, _ = batch
        model.eval()
        criterion.eval()
        images = prepare_images(images, device, channels_last)
        with autocast_context(device, amp):
            logits = criterion.logits(model(images))
        return logits.float(), labels.to(device)

    evaluator = Engine(step)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator


def create_sharded_evaluator(model: nn.Module, criterion: nn.Module, device: torch.device,
                             amp: str = "off", channels_last: bool = False) -> Engine:
    """The held-out evaluator of a ``collective`` criterion (Partial FC: nobody holds all the
    logits): each step calls ``criterion.row_statistics`` in every process (the evaluation
    loaders give every process as many batches; a batch with no image takes part with zero
    rows).  Metrics ``accuracy`` (share of rows whose own class has the largest logit) and
    ``loss`` (cross-entropy, nats), each the mean over the rows of all processes, as the
    ``Accuracy`` and ``Loss`` of :func:`create_evaluator` on the unsharded criterion."""
    from ignite.metrics import Loss

    @torch.no_grad()
    def step(engine: Engine, batch):
        images, labels, _ = batch
        model.eval()
        criterion.eval()
        labels = labels.to(device).long()
        if labels.numel():
            with autocast_context(device, amp):
                embeddings = model(prepare_images(images, device, channels_last))
        else:
            embeddings = _no_rows(model, device).detach()
        loss, correct = criterion.row_statistics(embeddings, labels)
        return loss, correct, labels

    def mean(values: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        return values.sum() / max(1, values.numel())  # weighted by the rows (Loss: x len)

    evaluator = Engine(step)
    Loss(mean, output_transform=lambda o: (o[1], o[2]), device=device).attach(evaluator,
                                                                             "accuracy")
    Loss(mean, output_transform=lambda o: (o[0], o[2]), device=device).attach(evaluator, "loss")
    return evaluator
