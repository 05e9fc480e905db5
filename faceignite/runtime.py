"""Where and how a step runs: device, mixed precision, memory format, several processes.

The trainer (:mod:`faceignite.engine`), the evaluators and the commands all take these from here,
so ``--device``, ``--amp`` and ``--channels_last`` mean the same thing everywhere.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Callable

import ignite.distributed as idist
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda``/``cuda:N`` without that GPU is a
    :class:`FaceIgniteError` naming ``--device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FaceIgniteError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FaceIgniteError(f"--device {name}: no CUDA GPU on this machine; use --device cpu "
                                  f"or auto")
        if device.index is not None and device.index >= count:
            raise FaceIgniteError(f"--device {name}: this machine has {count} CUDA GPU(s) "
                                  f"(cuda:0 to cuda:{count - 1})")
    return device


def resolve_gpus(cfg: Any) -> None:
    """``--gpus 0,1`` (the second original system's ``gpu_id``): one process per named GPU.

    Sets ``cfg.device`` (one GPU) or ``cfg.nproc_per_node`` and ``CUDA_VISIBLE_DEVICES``
    (several; the spawned processes then see exactly those).  With ``--device cpu`` it is
    ignored; on a machine without CUDA the run goes on on the CPU with one warning, as the
    second system did; GPUs that this machine lacks are a :class:`FaceIgniteError`."""
    text = getattr(cfg, "gpus", None)
    if not text or str(cfg.device).startswith("cpu"):
        return
    try:
        ids = [int(part) for part in str(text).replace(" ", "").split(",") if part != ""]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise FaceIgniteError(f"--gpus {text}: give distinct GPU numbers separated by commas, "
                              f"e.g. 0,1")
    if not torch.cuda.is_available():
        logger.warning("--gpus %s: no CUDA on this machine, training on the CPU", text)
        cfg.device = "cpu"
        return
    count = torch.cuda.device_count()
    if max(ids) >= count:
        raise FaceIgniteError(f"--gpus {text}: this machine has {count} CUDA GPU(s) (0 to "
                              f"{count - 1})")
    if len(ids) == 1:
        cfg.device = f"cuda:{ids[0]}"
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    cfg.nproc_per_node = len(ids)


def autocast_context(device: torch.device, amp: str):
    """An autocast context for ``amp`` in {off, bf16, fp16}; a no-op when off."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def eval_autocast_context(device: torch.device, amp: str):
    """The autocast context of evaluation (embeddings, held-out logits): bf16 as in training,
    but fp32 for ``fp16``.  fp16's range ends at 65,504: a network whose BatchNorm running
    statistics are still young (the first validation of a run) gives larger raw activations in
    eval mode, which become inf, then NaN embeddings; seen on an H200 after one epoch at
    ``--amp fp16``.  bf16 has fp32's range; the GradScaler protects only the training step."""
    return autocast_context(device, "off" if amp == "fp16" else amp)


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (bf16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


def prepare_images(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on ``device``, in channels_last memory format when asked."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s weights to channels_last in place (optimizers stay valid); idempotent.
    Do it once, before DDP builds its gradient buckets."""
    return model.to(memory_format=torch.channels_last)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DataParallel / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def rank0_decides(decide: Callable[[], str]) -> str:
    """``decide()`` in process 0, its answer shared with every process (``idist.broadcast``).  A
    :class:`FaceIgniteError` there is raised in every process, so all of them stop alike."""
    answer = ""
    if idist.get_rank() == 0:
        try:
            answer = "ok:" + decide()
        except FaceIgniteError as exc:
            answer = f"error:{exc}"
    if idist.get_world_size() > 1:
        answer = str(idist.broadcast(answer, src=0))
    kind, _, value = answer.partition(":")
    if kind == "error":
        raise FaceIgniteError(value)
    return value


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


def _ddp(module: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DDP without a buffer broadcast in each forward (the step copies rank 0's buffers after
    each optimizer step instead).  ``broadcast_buffers=False`` means that on every torch >= 2.1;
    newer ones call it deprecated, so that one warning is silenced, and the buffers are synced
    once here, as the older ones did at construction."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        if device == idist.device():
            wrapped = idist.auto_model(module, sync_bn=sync_bn, broadcast_buffers=False)
        else:  # gloo on CPU on a machine that also has GPUs: auto_model would move it to the GPU
            if sync_bn:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            wrapped = DistributedDataParallel(module, broadcast_buffers=False)
    broadcast_buffers(unwrap(wrapped))
    return wrapped


def auto_modules(model: nn.Module, criterion: nn.Module, device: torch.device,
                 sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
    """The model and the criterion as the training step calls them.

    One process: both unchanged.  Several (``idist.get_world_size() > 1``): each goes through
    DDP, the criterion too when it has trainable parameters (classifier, centres), so that DDP
    all-reduces their gradients with the model's: the centres, the classifier and the
    optimizers' states stay identical on every process.  Buffers (BatchNorm statistics) are not
    broadcast by DDP in each forward: the step copies rank 0's after each optimizer step
    (:func:`broadcast_buffers`).  ``sync_bn``: SyncBatchNorm.  Convert to channels_last
    (:func:`to_channels_last`) before.  Keep using the plain ``model``/``criterion`` for
    evaluators, optimizers and checkpoints.  A ``collective`` criterion (Partial FC: its shards
    differ per process and it does its own all-gathers) is never wrapped.
    """
    if idist.get_world_size() == 1:
        return model, criterion

    def wrap(module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # e.g. a triplet loss: nothing to all-reduce
        if getattr(module, "collective", False):
            return module  # Partial FC: sharded, nothing to all-reduce
        return _ddp(module, device, sync_bn)

    return wrap(model), wrap(criterion)
