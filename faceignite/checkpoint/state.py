"""What a checkpoint holds: :class:`TrainingState`, the ``state_dict``/``load_state_dict``
object Ignite's ``Checkpoint`` saves (model, centres, optimizers, scheduler, scaler, trainer,
training sampler, RNG, split, options), and its parts.
"""
from __future__ import annotations

import logging
import numbers
import random
from typing import Any, Mapping

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from faceignite import __version__
from faceignite.checkpoint.files import FORMAT, FORMAT_VERSION, RESUME_KEYS, check_compatible
from faceignite.config import plain_config
from faceignite.errors import FaceIgniteError
from faceignite.runtime import unwrap
from faceignite.data.index import index_digest

logger = logging.getLogger("faceignite")

class RNGState:
    """The random generators (Python, NumPy, torch CPU and every CUDA device) as plain data."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state(legacy=False)
        cuda = (torch.cuda.get_rng_state_all()
                if torch.cuda.is_available() and torch.cuda.is_initialized() else [])
        return {"python": random.getstate(),
                "numpy": {"bit_generator": np_state["bit_generator"],
                          "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                          "pos": int(np_state["state"]["pos"]),
                          "has_gauss": int(np_state["has_gauss"]),
                          "gauss": float(np_state["gauss"])},
                "torch": torch.get_rng_state(),
                "cuda": cuda}

    def load_state_dict(self, state: Mapping) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state({"bit_generator": n["bit_generator"],
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
        torch.set_rng_state(state["torch"].cpu())
        cuda = list(state.get("cuda") or [])
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        elif cuda:
            logger.warning("checkpoint has CUDA random states of %d devices, this machine has %d: "
                           "not restored", len(cuda), torch.cuda.device_count() if
                           torch.cuda.is_available() else 0)


def is_sharded(criterion: nn.Module) -> bool:
    """A criterion whose rows are spread over the processes (Partial FC): checkpoints gather
    and slice them (``full_state_dict`` / ``load_full_state_dict``)."""
    return hasattr(unwrap(criterion), "full_state_dict")


def num_classes_of(criterion: nn.Module) -> int | None:
    if is_sharded(criterion):
        return int(unwrap(criterion).num_classes)
    classifier = getattr(criterion, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return classifier.out_features
    centers = getattr(getattr(criterion, "center_loss", None), "centers", None)
    return int(centers.shape[0]) if centers is not None else None


LOSS_OF_CRITERION = {"SoftmaxCenterLoss": "center", "ArcFace": "arcface", "CosFace": "cosface",
                     "TripletLoss": "triplet", "PartialFC(softmax)": "center",
                     "PartialFC(arcface)": "arcface", "PartialFC(cosface)": "cosface"}


def criterion_name(criterion: nn.Module) -> str:
    """The criterion's class, with its head for Partial FC (``PartialFC(arcface)``)."""
    criterion = unwrap(criterion)
    name = type(criterion).__name__
    head = getattr(criterion, "head", None)
    return f"{name}({head})" if name == "PartialFC" and isinstance(head, str) else name


def describe_loss(name: str) -> str:
    """``ArcFace (the arcface experiments, e.g. experiments/resnet34_arcface.py)``."""
    loss = LOSS_OF_CRITERION.get(name)
    return (f"{name} (loss '{loss}': the {loss} experiments, e.g. "
            f"experiments/resnet34_{loss}.py)" if loss else name)


def dataset_split(data: Any) -> dict:
    """The train/validation split of a :class:`~faceignite.data.FaceData`, as tensors, with the
    index's size and digest (to refuse a resume on changed data)."""
    index = data.index
    return {"train_indices": torch.tensor(data.train_indices, dtype=torch.int32),
            "val_indices": torch.tensor(data.val_indices, dtype=torch.int32),
            "num_images": len(index), "index_digest": index_digest(index.classes, index.files)}


def _metrics(trainer: Engine) -> dict:
    out = {}
    for k, v in trainer.state.metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, numbers.Real):
            out[k] = float(v)
    return out


class TrainingState:
    """Everything a run needs to continue exactly, as one ``state_dict`` for Ignite's Checkpoint.

    ``data`` (a :class:`~faceignite.data.FaceData`) gives the split, image size, batch size and
    the training sampler, whose own ``state_dict`` (seed, epoch, position) is saved and restored
    with the rest.  ``config``: the record of the run's options that the checkpoint stores under
    its ``config`` key, a JSON-plain copy made by the composition (``plain_config(cfg)``); it is
    data written to the file, never read here for an option.  :meth:`load_state_dict`
    first checks that the checkpoint fits (architecture, classes, embedding size, optimizers,
    data set, epoch length) and raises :class:`FaceIgniteError` naming the mismatch before
    changing anything.

    Distributed runs: rank 0's Ignite ``Checkpoint`` writes the file; every process loads it.
    Files hold the plain modules' weights (no ``module.`` prefixes) and the batch of all
    processes together (``batch_size_training``), so a checkpoint resumes with any number of
    processes, mid-epoch too: iterations are global (see ``build_face_data``), and the
    sampler's position counts the samples of all processes, so each process skips its share.
    A sharded criterion (``--partial_fc``) is saved whole (gathered to rank 0 inside
    :meth:`state_dict`, which every process calls) and loaded as each process's rows, so its
    checkpoints resume with or without ``--partial_fc``.
    """

    def __init__(self, trainer: Engine, model: nn.Module, criterion: nn.Module,
                 optimizers: Mapping[str, torch.optim.Optimizer], lr_scheduler: Any = None,
                 data: Any = None, config: Mapping[str, Any] | None = None,
                 scaler: torch.amp.GradScaler | None = None):
        self.trainer, self.model, self.criterion = trainer, model, criterion
        self.optimizers, self.lr_scheduler, self.data = optimizers, lr_scheduler, data
        self.config = plain_config(config)
        self.scaler = scaler if scaler is not None else getattr(trainer.state, "scaler", None)
        self.split = dataset_split(data) if data is not None else None
        self.image_size = getattr(data, "image_size", None)
        loader = getattr(data, "train_loader", None)
        self.world_size = idist.get_world_size()
        sampler = getattr(loader, "sampler", None)
        self.sampler = sampler if hasattr(sampler, "load_state_dict") else None
        self.process_batch_size = getattr(loader, "batch_size", None)  # what each process loads
        self.batch_size = (self.process_batch_size * self.world_size  # all processes together
                           if self.process_batch_size else None)

    def state_dict(self) -> dict:
        """The checkpoint.  With a sharded criterion (``--partial_fc``) this is collective (Ignite
        calls it in every process, rank 0 writes): the full classifier, centres and classifier
        optimizer state are gathered to rank 0 (``{}`` elsewhere), under the unsharded keys."""
        model = unwrap(self.model)
        opt_model, opt_centers = self.optimizers.get("model"), self.optimizers.get("centers")
        criterion = unwrap(self.criterion)
        if is_sharded(criterion):  # both collectives, in every process, in this order
            criterion_state = criterion.full_state_dict()
            opt_model_state = criterion.full_optimizer_state_dict(opt_model) if opt_model else None
            opt_centers_state = (criterion.full_optimizer_state_dict(opt_centers)
                                 if opt_centers else None)
        else:
            criterion_state = criterion.state_dict()
            opt_model_state = opt_model.state_dict() if opt_model else None
            opt_centers_state = opt_centers.state_dict() if opt_centers else None
        state = self.trainer.state
        epoch_length = state.epoch_length or 0
        metrics = _metrics(self.trainer)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "faceignite_version": __version__,
            # the original trainer's keys ("epoch" = completed epochs)
            "epoch": state.iteration // epoch_length if epoch_length else state.epoch,
            "num_classes": num_classes_of(self.criterion),
            "embedding_dimension": getattr(model, "embedding_dim", None),
            "batch_size_training": self.batch_size,
            "model_state_dict": model.state_dict(),
            "model_architecture": getattr(model, "architecture", type(model).__name__),
            "optimizer_model_state_dict": opt_model_state,
            "optimizer_centerloss_state_dict": opt_centers_state,
            "learning_rate_scheduler_state_dict": (self.lr_scheduler.state_dict()
                                                   if self.lr_scheduler is not None else None),
            # what an exact resume needs besides
            "iteration": state.iteration,
            "world_size": self.world_size,
            "optimizer_classes": {k: type(o).__name__ for k, o in self.optimizers.items()},
            "criterion_state_dict": criterion_state,
            "criterion_class": criterion_name(criterion),
            "scaler_state_dict": self.scaler.state_dict() if self.scaler is not None else {},
            "trainer_state_dict": dict(self.trainer.state_dict()),
            "sampler_state_dict": self.sampler.state_dict() if self.sampler is not None else None,
            "rng_state": RNGState().state_dict(),
            "split": self.split,
            "image_size": self.image_size,
            "metrics": metrics,
            "lfw_threshold": metrics.get("lfw_threshold"),
            "config": self.config,
        }

    # -- loading
    def check(self, ckpt: Mapping) -> None:
        """Raise :class:`FaceIgniteError` if ``ckpt`` cannot continue this run exactly."""
        model = unwrap(self.model)
        check_compatible(ckpt, getattr(model, "architecture", None), num_classes_of(self.criterion),
                         getattr(model, "embedding_dim", None))
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise FaceIgniteError(f"{ckpt.get('path', 'checkpoint')} cannot resume a run (no "
                                  f"{', '.join(missing)}): use --finetune to load its backbone")
        path = ckpt.get("path", "checkpoint")
        then, now = ckpt.get("criterion_class"), criterion_name(self.criterion)
        same = LOSS_OF_CRITERION.get(then, then) == LOSS_OF_CRITERION.get(now, now)
        if then is not None and not same:  # Partial FC and the plain loss resume each other
            raise FaceIgniteError(f"{path} was trained with {describe_loss(then)}; this run's "
                                  f"loss is {describe_loss(now)}: resume it with its own loss, "
                                  f"or pass --finetune to start this loss from its backbone")
        saved = ckpt.get("optimizer_classes") or {}
        for name, opt in self.optimizers.items():
            if saved.get(name, type(opt).__name__) != type(opt).__name__:
                raise FaceIgniteError(f"{path}: its {name} optimizer is {saved[name]}, this run's "
                                      f"is {type(opt).__name__} (--optimizer)")
        if self.split is not None and ckpt.get("split"):
            then, now = ckpt["split"], self.split
            if (then["num_images"], then["index_digest"]) != (now["num_images"],
                                                               now["index_digest"]):
                raise FaceIgniteError(
                    f"{path}: the training folder changed since it was saved ({then['num_images']} "
                    f"images then, {now['num_images']} now, or other file names); resume on the "
                    f"same data, or --finetune to start a new run from its weights")
        loader = getattr(self.data, "train_loader", None)
        saved_length = ckpt["trainer_state_dict"].get("epoch_length")
        if loader is not None and saved_length and len(loader) != saved_length:
            then = ckpt.get("world_size") or 1
            hint = (f" (saved by {then} processes, {self.world_size} now: the last, partial "
                    f"batch of an epoch differs; resume with {then} processes)"
                    if then != self.world_size else "")
            raise FaceIgniteError(f"{path}: epochs of {saved_length} iterations then, "
                                  f"{len(loader)} now: same --batch_size and data needed{hint}")

    def load_state_dict(self, ckpt: Mapping) -> None:
        self.check(ckpt)
        unwrap(self.model).load_state_dict(ckpt["model_state_dict"])
        criterion = unwrap(self.criterion)
        sharded = is_sharded(criterion)  # this process's rows of the full tensors
        try:
            if sharded:
                criterion.load_full_state_dict(ckpt["criterion_state_dict"])
            else:
                criterion.load_state_dict(ckpt["criterion_state_dict"])
        except (RuntimeError, KeyError) as exc:  # a checkpoint older than criterion_class
            keys = ", ".join(sorted(ckpt["criterion_state_dict"])[:4]) or "none"
            raise FaceIgniteError(
                f"{ckpt.get('path', 'checkpoint')}: its loss state (keys {keys}) does not fit "
                f"this run's loss {describe_loss(criterion_name(criterion))} "
                f"({str(exc).splitlines()[0][:120]}); resume it with the loss it was trained "
                "with, or pass --finetune to start this loss from its backbone") from None
        for name, key in (("model", "optimizer_model_state_dict"),
                          ("centers", "optimizer_centerloss_state_dict")):
            if name in self.optimizers and ckpt.get(key) is not None:
                if sharded:
                    criterion.load_full_optimizer_state_dict(self.optimizers[name], ckpt[key])
                else:
                    self.optimizers[name].load_state_dict(ckpt[key])
        if self.lr_scheduler is not None and ckpt.get("learning_rate_scheduler_state_dict"):
            try:
                self.lr_scheduler.load_state_dict(ckpt["learning_rate_scheduler_state_dict"])
            except (ValueError, KeyError, TypeError) as exc:
                raise FaceIgniteError(f"{ckpt.get('path', 'checkpoint')}: its LR schedule does "
                                      f"not fit this run's (--lr_scheduler, --warmup_epochs): "
                                      f"{exc}") from None
        if self.scaler is not None:
            if ckpt.get("scaler_state_dict") and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler_state_dict"])
            elif self.scaler.is_enabled():
                logger.warning("checkpoint has no fp16 grad-scaler state: starting a fresh one")
        self.trainer.load_state_dict(ckpt["trainer_state_dict"])
        self._load_sampler(ckpt)
        state = self.trainer.state
        mid_epoch = bool(state.epoch_length and state.iteration % state.epoch_length)
        rng, saved_rng = RNGState(), ckpt["rng_state"]
        if mid_epoch:  # after the resumed epoch's data iterator has drawn its seed, as it had then
            first = self.trainer.state.iteration + 1
            self.trainer.add_event_handler(
                Events.ITERATION_STARTED(event_filter=lambda _, i: i == first),
                lambda _: rng.load_state_dict(saved_rng))
        else:
            rng.load_state_dict(saved_rng)

    def _load_sampler(self, ckpt: Mapping) -> None:
        """Restore the training sampler's epoch and position; a checkpoint saved before samplers
        had a state (no ``sampler_state_dict``) gives them from the trainer's iteration (global
        iterations: ``iterations done x batch of all processes`` samples)."""
        if self.sampler is None:
            return
        saved = ckpt.get("sampler_state_dict")
        if saved is None:
            state = self.trainer.state
            if not state.epoch_length:
                return
            saved = {"seed": self.sampler.seed, "epoch": state.iteration // state.epoch_length,
                     "position": (state.iteration % state.epoch_length) * (self.batch_size or 0)}
        self.sampler.load_state_dict(saved)
