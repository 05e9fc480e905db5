"""The step function, the trainer engine and the held-out evaluator."""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch
from ignite.engine import Engine, Events
from torch import nn

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
    ``trainer.state.scaler`` holds the GradScaler (for checkpoints).  ``channels_last`` also
    converts the model's weights (in place: optimizers stay valid); ``compile_model`` runs the
    model's forward through ``torch.compile`` (``model`` itself, its ``state_dict`` and the
    evaluators stay uncompiled).
    """
    scaler = scaler or make_grad_scaler(device, amp)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model

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
        if hasattr(criterion, "before_optimizer_step"):
            criterion.before_optimizer_step()
        for opt in optimizers.values():
            scaler.step(opt)
        scaler.update()
        result = {k: v.detach() for k, v in out.items() if k != "logits" and v.ndim == 0}
        if "logits" in out:
            result["accuracy"] = (out["logits"].detach().argmax(1) == labels).float().mean()
        result["batch_size"] = labels.numel()
        result["skipped"] = skipped
        return result

    trainer = Engine(step)
    trainer.state.scaler = scaler

    @trainer.on(Events.EPOCH_STARTED)
    def _reseed_sampler(engine: Engine) -> None:
        sampler = getattr(engine.state.dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch") and getattr(sampler, "skip", 0) == 0:
            sampler.set_epoch(engine.state.epoch - 1)

    return trainer


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
