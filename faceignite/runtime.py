"""Where and how a step runs: device, mixed precision, memory format, several processes.

:class:`Runtime` holds them as one object, made once by the composition and passed to the
trainer (:mod:`faceignite.engine`), the evaluators and the commands, so ``--device``, ``--amp``,
``--channels_last`` and ``--compile`` mean the same thing everywhere::

    runtime = Runtime.create(device="auto", amp="bf16", channels_last=True)
    model = runtime.prepare_model(build_model(...))      # on the device, channels_last weights
    with runtime.autocast():
        out = model(runtime.prepare(images))
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Literal

import ignite.distributed as idist
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Amp = Literal["off", "bf16", "fp16"]


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


def resolve_gpus(gpus: str | None, device: str = "auto") -> dict[str, str | int]:
    """``--gpus 0,1`` (the second original system's ``gpu_id``): one process per named GPU.

    Returns the options it decides: ``{"device": "cuda:N"}`` (one GPU), ``{"nproc_per_node":
    N}`` and sets ``CUDA_VISIBLE_DEVICES`` (several; the spawned processes then see exactly
    those), ``{"device": "cpu"}`` on a machine without CUDA (the run goes on on the CPU with one
    warning, as the second system did), ``{}`` without ``gpus`` or with ``device`` cpu.  GPUs
    that this machine lacks are a :class:`FaceIgniteError`."""
    text = gpus
    if not text or str(device).startswith("cpu"):
        return {}
    try:
        ids = [int(part) for part in str(text).replace(" ", "").split(",") if part != ""]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise FaceIgniteError(f"--gpus {text}: give distinct GPU numbers separated by commas, "
                              f"e.g. 0,1")
    if not torch.cuda.is_available():
        logger.warning("--gpus %s: no CUDA on this machine, training on the CPU", text)
        return {"device": "cpu"}
    count = torch.cuda.device_count()
    if max(ids) >= count:
        raise FaceIgniteError(f"--gpus {text}: this machine has {count} CUDA GPU(s) (0 to "
                              f"{count - 1})")
    if len(ids) == 1:
        return {"device": f"cuda:{ids[0]}"}
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    return {"nproc_per_node": len(ids)}


@dataclass(frozen=True)
class Runtime:
    """Where and how the steps run, for this process: ``device``, mixed precision ``amp``
    (``off``, ``bf16``, ``fp16``), ``channels_last`` memory format, ``compile`` (the training
    forward through ``torch.compile``), and this process's ``rank`` of ``world_size`` (by
    default ``ignite.distributed``'s: 0 of 1 outside a distributed run).

    Made once (:meth:`create`) and passed whole to the trainer and the evaluators."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: Amp = "off"
    channels_last: bool = False
    compile: bool = False
    rank: int = field(default_factory=idist.get_rank)  # this process's, when not given
    world_size: int = field(default_factory=idist.get_world_size)

    def __post_init__(self) -> None:
        if self.amp not in ("off", *AMP_DTYPES):
            raise ValueError(f"amp {self.amp!r}: one of off, bf16, fp16")
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def create(cls, device: str | torch.device = "auto", amp: Amp = "off",
               channels_last: bool = False, compile: bool = False) -> "Runtime":
        """The runtime of this process: ``device`` as :func:`resolve_device` reads it (``auto``,
        ``cpu``, ``cuda:N``, or a ``torch.device``); rank and world size from
        ``ignite.distributed`` (1 process outside a distributed run)."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        return cls(device, amp, channels_last, compile)

    @classmethod
    def of(cls, runtime: "Runtime | torch.device | str") -> "Runtime":
        """``runtime`` itself, or for a device (``"cpu"``, ``torch.device("cuda")``) the runtime
        of that device with the defaults (fp32, the default memory format, eager) in this
        process of ``ignite.distributed``."""
        if isinstance(runtime, Runtime):
            return runtime
        return cls(torch.device(runtime))

    @property
    def distributed(self) -> bool:
        """Several processes train together."""
        return self.world_size > 1

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A batch on the device (``non_blocking``: no wait for the copy), in channels_last
        format when asked."""
        images = images.to(self.device, non_blocking=True)
        return (images.contiguous(memory_format=torch.channels_last) if self.channels_last
                else images)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` moved to the device, its weights in channels_last format when asked (in
        place: optimizers built on it stay valid).  Do it once, before DDP wrapping."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast(self, amp: Amp | None = None) -> ContextManager:
        """The training step's autocast context (``amp``: this runtime's unless given); a no-op
        when off."""
        amp = self.amp if amp is None else amp
        if amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[amp])

    def eval_autocast(self) -> ContextManager:
        """The autocast context of evaluation (embeddings, held-out logits): bf16 as in
        training, but fp32 for ``fp16``.  fp16's range ends at 65,504: a network whose BatchNorm
        running statistics are still young (the first validation of a run) gives larger raw
        activations in eval mode, which become inf, then NaN embeddings; seen on an H200 after
        one epoch at ``--amp fp16``.  bf16 has fp32's range; the GradScaler protects only the
        training step."""
        return self.autocast("off" if self.amp == "fp16" else self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler for the training step, enabled only for fp16 on CUDA (bf16 needs
        none)."""
        return torch.amp.GradScaler(self.device.type,
                                    enabled=self.amp == "fp16" and self.device.type == "cuda")

    def compiled(self, model: nn.Module) -> nn.Module:
        """``torch.compile(model)`` with ``compile``, else ``model``."""
        return torch.compile(model) if self.compile else model


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


def auto_modules(model: nn.Module, criterion: nn.Module, runtime: Runtime | torch.device,
                 sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
    """The model and the criterion as the training step calls them.

    One process: both unchanged.  Several (``idist.get_world_size() > 1``): each goes through
    DDP, the criterion too when it has trainable parameters (classifier, centres), so that DDP
    all-reduces their gradients with the model's: the centres, the classifier and the
    optimizers' states stay identical on every process.  Buffers (BatchNorm statistics) are not
    broadcast by DDP in each forward: the step copies rank 0's after each optimizer step
    (:func:`broadcast_buffers`).  ``sync_bn``: SyncBatchNorm.  Prepare the model before
    (:meth:`Runtime.prepare_model`: device, channels_last).  Keep using the plain
    ``model``/``criterion`` for evaluators, optimizers and checkpoints.  A ``collective`` criterion (Partial FC: its shards
    differ per process and it does its own all-gathers) is never wrapped.
    """
    if idist.get_world_size() == 1:
        return model, criterion
    device = Runtime.of(runtime).device

    def wrap(module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module  # e.g. a triplet loss: nothing to all-reduce
        if getattr(module, "collective", False):
            return module  # Partial FC: sharded, nothing to all-reduce
        return _ddp(module, device, sync_bn)

    return wrap(model), wrap(criterion)
