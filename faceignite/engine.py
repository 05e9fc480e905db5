"""The trainer engine (its step function), the stop agreement of several processes, and the
held-out evaluator.  Device, precision and DDP helpers live in :mod:`faceignite.runtime`."""
from __future__ import annotations

from typing import Iterable, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, EventEnum, Events
from ignite.metrics.metric import MetricUsage
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses.protocol import AdjustsGradients, Classifying
from faceignite.data.sampler import follow_trainer
from faceignite.runtime import Runtime, broadcast_buffers, unwrap


MIN_TRAIN_BATCH = 2  # BatchNorm in training mode needs two images (per process)
# Why the pieces below exist (issue 27, item 6: only what the no-host-sync rule and the agreement
# of several processes need):
# - skipped_step: a batch of fewer than MIN_TRAIN_BATCH decodable images is still one iteration
#   (one process: nothing runs; several: a zero-contribution step, or the others would wait in
#   DDP's all-reduce forever).  So an epoch is always len(loader) iterations, the epoch_length
#   every checkpoint records and a resume checks: old checkpoints resume exactly.
# - the step returns detached 0-d device tensors and plain ints: nothing is read back from the
#   device in the step; handlers read them at the agreement points only (handlers.control).
# - broadcast_buffers after each step (several processes): DDP runs with broadcast_buffers=False
#   (see runtime.auto_modules), so rank 0's BatchNorm statistics are copied here, once a step,
#   keeping the replicas identical (and the checkpoint, written by rank 0, everyone's).
# - stop_together: one all-reduce at the agreement points, so every process stops at the same
#   iteration whichever decided it.


class TrainerEvents(EventEnum):
    """Events of the trainer itself (registered by :func:`create_trainer`).

    ``NAN_DETECTED``: a training loss went NaN/inf (fired by the NaN guard of
    ``handlers.control``, and by :func:`stop_together` in the processes that learn it from
    another); the weights are poisoned from here on: handlers that save stop saving.
    """

    NAN_DETECTED = "nan_detected"


def register_trainer_events(trainer: Engine) -> None:
    """Make ``trainer`` accept :class:`TrainerEvents` (idempotent)."""
    if not trainer.has_registered_events(TrainerEvents.NAN_DETECTED):
        trainer.register_events(*TrainerEvents)


def create_trainer(model: nn.Module, criterion: nn.Module,
                   optimizers: Mapping[str, torch.optim.Optimizer],
                   runtime: Runtime | torch.device | str,
                   scaler: torch.amp.GradScaler | None = None,
                   image_size: int | None = None) -> Engine:
    """An Ignite trainer whose step computes ``criterion(model(x), y)`` and steps every optimizer.

    ``criterion`` follows :class:`faceignite.losses.Criterion`: a dict with ``loss`` (and e.g.
    ``ce``, ``center``, ``logits``); when it :class:`~faceignite.losses.AdjustsGradients`, its
    ``before_optimizer_step()`` runs between backward and the optimizer steps.  The step returns
    detached tensors — total and component losses, batch accuracy, batch size, skipped images —
    so nothing synchronises with the GPU until a handler reads them.

    ``runtime`` (a :class:`~faceignite.runtime.Runtime`, or a device for fp32): where the step
    runs, its autocast, the images' memory format (prepare the model once before:
    :meth:`~faceignite.runtime.Runtime.prepare_model`, before DDP wrapping), and with
    ``compile`` the model's forward through ``torch.compile`` (``model`` itself, its
    ``state_dict`` and the evaluators stay uncompiled).  ``scaler``: the fp16 GradScaler (give
    it, and the same one to the checkpoint's ``TrainingState``; by default
    ``runtime.grad_scaler()``).  In a distributed run pass the modules of
    :func:`~faceignite.runtime.auto_modules`: each process steps on its share of the batch, DDP
    averages the gradients, and rank 0's buffers are copied to all after the step.

    A batch of fewer than two decodable images (a last batch of one, images that failed to
    decode) is skipped and its images counted in ``skipped`` (see ``skipped_step`` inside for
    what a distributed process does instead); ``image_size`` (pixels) shapes the stand-in image
    of a distributed process whose very first batch decoded nothing.
    """
    runtime = Runtime.of(runtime)
    device = runtime.device
    scaler = scaler if scaler is not None else runtime.grad_scaler()
    forward = runtime.compiled(model)
    plain_criterion = unwrap(criterion)  # DDP hides the criterion's own methods
    adjust = plain_criterion if isinstance(plain_criterion, AdjustsGradients) else None
    distributed = runtime.distributed

    # the stand-in image's shape for skipped_step: the last batch's, or image_size's before one
    shape = {"image": None if image_size is None else (3, image_size, image_size)}

    def skipped_step(images: torch.Tensor, labels: torch.Tensor, skipped: int) -> dict:
        """A batch of fewer than :data:`MIN_TRAIN_BATCH` images: its images are counted as
        skipped.  One process: nothing runs.  Several: this process still takes part in the
        step, or the others would wait for it in DDP's all-reduce forever; it forwards its one
        image (or one black image when none decoded) with BatchNorm in eval mode (running
        statistics, none updated) and a loss multiplied by 0, so its gradients are zero: it
        contributes nothing (the all-reduce averages over every process, so this step's
        gradient is the others' mean scaled by (world size - 1) / world size), and every
        process still steps its optimizers, keeping the replicas identical."""
        skipped += labels.numel()
        if distributed:
            if labels.numel() == 0:
                if shape["image"] is None:
                    raise FaceIgniteError("a training batch with no decodable image came first "
                                          "in a distributed run: pass image_size to "
                                          "create_trainer")
                images = torch.zeros((1, *shape["image"]))
                labels = torch.zeros(1, dtype=torch.long)
            model.eval()
            criterion.eval()
            images = runtime.prepare(images)
            labels = labels.to(device, non_blocking=True)
            with runtime.autocast():
                embeddings = forward(images)
                out = criterion(embeddings, labels)
                # 0 * loss, and the embeddings in the graph: every DDP parameter gets its
                # (zero) gradient even from a loss that has none (a triplet loss of one image)
                nothing = torch.nan_to_num(out["loss"].float()) * 0 + embeddings.sum() * 0
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            scaler.scale(nothing).backward()
            if adjust is not None:
                adjust.before_optimizer_step()
            for opt in optimizers.values():
                scaler.step(opt)
            scaler.update()
            broadcast_buffers(model)
            broadcast_buffers(criterion)
        return {"loss": torch.zeros((), device=device), "batch_size": 0, "skipped": skipped}

    def step(engine: Engine, batch) -> dict[str, torch.Tensor]:
        images, labels, skipped = batch
        if labels.numel() < MIN_TRAIN_BATCH:  # empty or one image: BatchNorm cannot train
            # (several processes, Partial FC too: the skipped step still takes part in every
            # collective, the model's and the criterion's, with a zero contribution)
            return skipped_step(images, labels, skipped)
        shape["image"] = tuple(images.shape[1:])
        model.train()
        criterion.train()
        labels = labels.to(device, non_blocking=True)
        with runtime.autocast():
            out = criterion(forward(runtime.prepare(images)), labels)
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

    # the sampler's epoch and position follow the trainer's: a checkpoint saves both together
    follow_trainer(trainer)  # the sampler keeps the epoch and position a checkpoint saves

    return trainer


def _no_rows(model: nn.Module, device: torch.device) -> torch.Tensor:
    """A zero-row embedding batch (0 x ``embedding_dim``) for a collective criterion's step."""
    return torch.zeros(0, unwrap(model).embedding_dim, device=device, requires_grad=True)


# Engine.should_terminate as a number all processes can all-reduce (MAX: the strongest stop wins)
STOP_CODES = {False: 0, True: 1, "skip_completed": 2}


def stop_together(trainer: Engine, every: Iterable[int] = (1,)) -> None:
    """Several processes: when one process stops the trainer (NaN loss, ``--max_time``, early
    stopping, a hook), stop them all at the same point, rather than leave the others waiting for
    it in the next all-reduce; a NaN seen by one fires ``TrainerEvents.NAN_DETECTED`` in all.

    One small all-reduce (and one host read) at each multiple of an interval in ``every`` and
    at each epoch end — nothing in between: a handler that stops the trainer between those
    points must decide the same in every process (``handlers.control.StopCheck`` agrees on NaN,
    time limit and signals itself).  Attach it after every other ``ITERATION_COMPLETED`` and
    ``EPOCH_COMPLETED`` handler (the run control, :class:`handlers.control.RunControl`, does).  A no-op in a
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


def create_evaluator(model: nn.Module, criterion: Classifying,
                     runtime: Runtime | torch.device | str,
                     metrics: Mapping | None = None) -> Engine:
    """An evaluator whose output is ``(logits, labels)`` for Ignite's Accuracy and Loss metrics;
    ``criterion`` must be :class:`~faceignite.losses.Classifying`.  It runs on ``runtime``
    (eager, under its evaluation autocast).  A batch in which no image decoded gives ``None``
    and the metrics leave it out."""
    runtime = Runtime.of(runtime)
    device = runtime.device
    if not isinstance(criterion, Classifying):
        raise TypeError(f"{type(criterion).__name__} has no logits(): no held-out accuracy")

    @torch.no_grad()
    def step(engine: Engine, batch):
        images, labels, _ = batch
        if labels.numel() == 0:  # no image of the batch decoded: the metrics skip it
            return None
        model.eval()
        criterion.eval()
        images = runtime.prepare(images)
        with runtime.eval_autocast():
            logits = criterion.logits(model(images))
        return logits.float(), labels.to(device)

    evaluator = Engine(step)
    # the metrics update on batches that held an image only (an empty one returns None)
    usage = MetricUsage(Events.EPOCH_STARTED, Events.EPOCH_COMPLETED,
                        Events.ITERATION_COMPLETED(
                            event_filter=lambda engine, _: engine.state.output is not None))
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name, usage=usage)
    return evaluator


def create_sharded_evaluator(model: nn.Module, criterion: nn.Module,
                             runtime: Runtime | torch.device | str) -> Engine:
    """The held-out evaluator of a ``collective`` criterion (Partial FC: nobody holds all the
    logits): each step calls ``criterion.row_statistics`` in every process (the evaluation
    loaders give every process as many batches; a batch with no image takes part with zero
    rows).  Metrics ``accuracy`` (share of rows whose own class has the largest logit) and
    ``loss`` (cross-entropy, nats), each the mean over the rows of all processes, as the
    ``Accuracy`` and ``Loss`` of :func:`create_evaluator` on the unsharded criterion."""
    from ignite.metrics import Loss

    runtime = Runtime.of(runtime)
    device = runtime.device

    @torch.no_grad()
    def step(engine: Engine, batch):
        images, labels, _ = batch
        model.eval()
        criterion.eval()
        labels = labels.to(device).long()
        if labels.numel():
            with runtime.eval_autocast():
                embeddings = model(runtime.prepare(images))
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
