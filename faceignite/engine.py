"""The step function, the trainer engine and the held-out evaluator."""
from __future__ import annotations

import contextlib
import inspect
from typing import Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from faceignite.checkpoint import unwrap

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, amp: str):
    """An autocast context for ``amp`` in {off, bf16, fp16}; a no-op when off."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


def prepare_images(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def auto_modules(model: nn.Module, criterion: nn.Module, device: torch.device,
                 sync_bn: bool = False, channels_last: bool = False
                 ) -> tuple[nn.Module, nn.Module]:
    """The model and the criterion as the training step calls them.

    One process: both unchanged.  Several (``idist.get_world_size() > 1``): each goes through
    ``idist.auto_model`` (``DistributedDataParallel``), the criterion too when it has trainable
    parameters (classifier, centres), so that DDP all-reduces their gradients with the model's:
    the centres, the classifier and the optimizers' states stay identical on every process.
    Buffers (BatchNorm statistics) are not broadcast by DDP here: the step copies rank 0's
    after each optimizer step (:func:`broadcast_buffers`), so every process holds the same
    model between iterations (evaluation, checkpoints).  ``sync_bn``: SyncBatchNorm.  Keep
    using the plain ``model``/``criterion`` for evaluators, optimizers and checkpoints.
    """
    if channels_last:  # before DDP builds its gradient buckets
        model.to(memory_format=torch.channels_last)
    if idist.get_world_size() == 1:
        return model, criterion

    # no buffer broadcast in each forward (still at construction); older torch: broadcast_buffers
    no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                       inspect.signature(DistributedDataParallel.__init__).parameters
                       else {"broadcast_buffers": False})

    def wrap(module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # e.g. a triplet loss: nothing to all-reduce
        if device == idist.device():
            return idist.auto_model(module, sync_bn=sync_bn, **no_forward_sync)
        # gloo on CPU on a machine that also has GPUs: auto_model would move it to the GPU
        if sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, **no_forward_sync)

    return wrap(model), wrap(criterion)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into every process's
    ``module``: one broadcast per buffer dtype.  A no-op in a single process."""
    if idist.get_world_size() == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = idist.broadcast(torch.cat([b.detach().reshape(-1) for b in buffers]), src=src)
        offset = 0
        for b in buffers:
            b.data.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def create_trainer(model: nn.Module, criterion: nn.Module,
                   optimizers: Mapping[str, torch.optim.Optimizer], device: torch.device,
                   amp: str = "off", channels_last: bool = False,
                   scaler: torch.amp.GradScaler | None = None,
                   compile_model: bool = False) -> Engine:
    """An Ignite trainer whose step computes ``criterion(model(x), y)`` and steps every optimizer.

    The criterion returns a dict with ``loss`` (and e.g. ``ce``, ``center``, ``logits``); it may
    define ``before_optimizer_step()`` (center loss rescales its centres' gradient there).  The
    step returns detached tensors — total and component losses, batch accuracy, batch size,
    skipped images — so nothing synchronises with the GPU until a handler reads them.
    ``trainer.state.scaler`` holds the GradScaler (for checkpoints).  In a distributed run pass
    the modules of :func:`auto_modules`: each process steps on its share of the batch, DDP
    averages the gradients, and rank 0's buffers are copied to all after the step.
    ``channels_last`` also converts the model's weights (in place: optimizers stay valid);
    ``compile_model`` runs the model's forward through ``torch.compile`` (``model`` itself, its
    ``state_dict`` and the evaluators stay uncompiled).
    """
    scaler = scaler or make_grad_scaler(device, amp)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    plain_criterion = unwrap(criterion)  # DDP hides the criterion's own methods
    distributed = idist.get_world_size() > 1

    def step(engine: Engine, batch) -> dict[str, torch.Tensor]:
        images, labels, skipped = batch
        if labels.numel() == 0:  # every image of the batch failed to decode
            return {"loss": torch.zeros((), device=device), "batch_size": 0, "skipped": skipped}
        model.train()
        criterion.train()
        images = prepare_images(images, device, channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, amp):
            out = criterion(forward(images), labels)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        if hasattr(plain_criterion, "before_optimizer_step"):
            plain_criterion.before_optimizer_step()
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
    trainer.state.scaler = scaler

    from faceignite.data.sampler import follow_trainer  # here: faceignite.data imports lfw,
    # which imports this module (an upward import another change removes)
    follow_trainer(trainer)  # the sampler keeps the epoch and position a checkpoint saves

    return trainer


STOP_CODES = {False: 0, True: 1, "skip_completed": 2}


def stop_together(trainer: Engine) -> None:
    """Several processes: when one process stops the trainer (NaN loss, ``--max_time``), stop
    them all at the same iteration, rather than leave the others waiting for it in the next
    all-reduce.  One small all-reduce per iteration.  Attach it after every other
    ``ITERATION_COMPLETED`` handler.  A no-op in a single process.
    """
    if idist.get_world_size() == 1:
        return

    @trainer.on(Events.ITERATION_COMPLETED)
    def _agree_to_stop(engine: Engine) -> None:
        mine = torch.tensor([STOP_CODES.get(engine.should_terminate, 1),
                             int(bool(getattr(engine.state, "nan_detected", False)))])
        code, nan = idist.all_reduce(mine.to(idist.device()), op="MAX").tolist()
        if nan:
            engine.state.nan_detected = True  # the all-reduced gradients carried it everywhere
        if code and STOP_CODES.get(engine.should_terminate, 1) != code:
            engine.terminate(skip_completed=code == 2)


def create_evaluator(model: nn.Module, criterion: nn.Module, device: torch.device,
                     metrics: Mapping | None = None, amp: str = "off",
                     channels_last: bool = False) -> Engine:
    """An evaluator whose output is ``(logits, labels)`` for Ignite's Accuracy and Loss metrics."""

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
