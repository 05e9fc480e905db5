"""Starting from a checkpoint: :class:`Resume` (``--resume_path``: the exact run goes on;
``--finetune``: a new run from its backbone) and :func:`load_backbone`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ignite.handlers import Checkpoint
from torch import nn

from faceignite.checkpoint.auto import elastic_restart
from faceignite.checkpoint.files import (TRAJECTORY_OPTIONS, check_checkpoint_options,
                                         check_compatible, load_checkpoint)
from faceignite.checkpoint.files import NAME  # the one object's key in Checkpoint(to_save)
from faceignite.checkpoint.state import TrainingState, unwrap
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")


def load_backbone(model: nn.Module, ckpt: Mapping) -> None:
    """``--finetune``: copy the checkpoint's backbone weights (same architecture) into ``model``.

    The embedding head is copied too when its size matches; classes, optimizers and the run's
    position are not.
    """
    model = unwrap(model)
    check_compatible(ckpt, architecture=getattr(model, "architecture", None), finetune_hint=False)
    weights = ckpt["model_state_dict"]
    own = model.state_dict()
    take = {k: v for k, v in weights.items()
            if k in own and own[k].shape == v.shape
            and (k.startswith("backbone.") or ckpt.get("embedding_dimension") == getattr(
                model, "embedding_dim", None))}
    missing = [k for k in own if k.startswith("backbone.") and k not in take]
    if missing:
        raise FaceIgniteError(f"checkpoint {ckpt.get('path', '')} lacks backbone weights of "
                              f"{getattr(model, 'architecture', 'this model')} (e.g. {missing[0]})")
    model.load_state_dict(take, strict=False)
    logger.info("finetune: %s weights (%s) loaded from %s", len(take),
                "backbone and embedding head" if len(take) > sum(
                    k.startswith("backbone.") for k in take) else "backbone only", ckpt.get("path"))


def checkpoint_position(ckpt: Mapping) -> str:
    """``epoch E iteration I`` of a checkpoint, E the epoch its iteration belongs to (counted
    from 1, as Ignite and the interrupt message count it: iteration 3 of 2-iteration epochs is
    epoch 2; the last iteration of epoch 2 is epoch 2 too)."""
    iteration = ckpt.get("iteration")
    length = (ckpt.get("trainer_state_dict") or {}).get("epoch_length")
    if iteration is None:
        return f"epoch {ckpt.get('epoch')}"
    epoch = -(-int(iteration) // int(length)) if length else ckpt.get("epoch")
    return f"epoch {epoch} iteration {iteration}"


def keep_input_convention(ckpt: Mapping, normalize: str | None,
                          augment: str | None) -> dict[str, str]:
    """The ``--normalize`` and ``--augment`` a resumed run goes on with: the checkpoint's (a
    checkpoint from before those options was trained with ImageNet's and the box pipeline);
    a change from this run's ``normalize``/``augment`` is logged."""
    config = ckpt.get("config") or {}
    kept = {}
    for name, now, before in (("normalize", normalize, "imagenet"), ("augment", augment, "box")):
        value = config.get(name) or before
        if now != value:
            logger.info("--%s %s: as the checkpoint's run", name, value)
        kept[name] = value
    return kept


@dataclass(frozen=True)
class ResumeOptions:
    """The options :meth:`Resume.from_options` reads: the checkpoint (``--resume_path``, a file
    or a run folder; ``--finetune``), what it must fit (``--model``, ``--embedding_dim``,
    ``--epochs``) and the options that fix a run's trajectory (:data:`TRAJECTORY_OPTIONS`), and
    the input convention a resumed run keeps (``--normalize``, ``--augment``)."""

    resume_path: str | None = None
    finetune: bool = False
    model: str | None = None
    embedding_dim: int | None = None
    epochs: int = 1
    batch_size: int | None = None
    image_size: int | None = None
    seed: int | None = None
    optimizer: str | None = None
    lr_scheduler: str | None = None
    normalize: str | None = None
    augment: str | None = None


class Resume:
    """``--resume_path`` / ``--finetune`` for an experiment: read the file before the data is
    built (to reuse its split), then :meth:`restore` once every object exists.

        resume = Resume.from_options(options_group(cfg, ResumeOptions))
        vars(cfg).update(resume.kept_options)     # a resumed run keeps its input convention
        data = build_face_data(options_group(cfg, DataOptions), val_indices=resume.val_indices)
        ...
        resume.restore(TrainingState(trainer, model, criterion, optimizers, scheduler, data,
                                     plain_config(cfg)))

    ``kept_options``: the options a resumed run takes from its checkpoint (``normalize``,
    ``augment``), for the composition to apply before it builds the data and the model.
    """

    def __init__(self, ckpt: Mapping | None = None, finetune: bool = False,
                 max_epochs: int | None = None, kept_options: Mapping[str, Any] | None = None):
        self.ckpt, self.finetune, self.max_epochs = ckpt, finetune, max_epochs
        self.kept_options = dict(kept_options or {})

    @classmethod
    def from_options(cls, cfg: ResumeOptions) -> "Resume":
        """Load and check ``cfg.resume_path`` (nothing when it is not set)."""
        if not cfg.resume_path:
            if cfg.finetune:
                raise FaceIgniteError("--finetune needs --resume_path CHECKPOINT")
            return cls()
        ckpt = load_checkpoint(cfg.resume_path)
        kept: dict[str, str] = {}
        if cfg.finetune:
            check_compatible(ckpt, architecture=cfg.model, finetune_hint=False)
        else:
            check_compatible(ckpt, architecture=cfg.model, embedding_dim=cfg.embedding_dim)
            check_checkpoint_options(ckpt, {name: getattr(cfg, name)
                                            for name in TRAJECTORY_OPTIONS})
            done = ckpt.get("trainer_state_dict", {})
            length = done.get("epoch_length")
            if length and done.get("iteration", 0) >= cfg.epochs * length:
                raise FaceIgniteError(f"{ckpt['path']} has already trained {ckpt.get('epoch')} "
                                      f"epochs; pass --epochs above {ckpt.get('epoch')} to go on")
            kept = keep_input_convention(ckpt, cfg.normalize, cfg.augment)
        before = (ckpt.get("config") or {}).get("epochs")
        if not cfg.finetune and before not in (None, cfg.epochs):
            logger.warning("--epochs %s (the checkpoint's run: %s): the LR schedule goes on as "
                           "built for %s epochs", cfg.epochs, before, before)
        restart = "" if cfg.finetune else elastic_restart()
        logger.info("%s from %s (%s)%s", "finetuning" if cfg.finetune else "resuming",
                    ckpt["path"], checkpoint_position(ckpt), f" after {restart}" if restart else "")
        return cls(ckpt, cfg.finetune, cfg.epochs, kept)

    @property
    def path(self) -> str | None:
        return self.ckpt.get("path") if self.ckpt else None

    @property
    def val_indices(self) -> list[int] | None:
        """The held-out images of the resumed run (``None``: split anew)."""
        if not self.ckpt or self.finetune or not self.ckpt.get("split"):
            return None
        return self.ckpt["split"]["val_indices"].tolist()

    def restore(self, state: TrainingState) -> None:
        """Load everything (resume) or the backbone alone (finetune); no checkpoint: nothing."""
        if not self.ckpt:
            return
        if self.finetune:
            load_backbone(state.model, self.ckpt)
        else:  # the file is Checkpoint's one-object format, read safely (weights_only) before
            Checkpoint.load_objects({NAME: state}, self.ckpt)
        self.ckpt = {"path": self.path}  # free the tensors
