"""Training checkpoints: what one holds, how to read one safely, and how a run resumes from it.

A checkpoint is one ``torch.save`` file of tensors and plain containers, so it loads with
``torch.load(..., weights_only=True)``: loading never runs code from the file.  Its top-level keys
are the original trainer's (``epoch``, ``num_classes``, ``embedding_dimension``,
``batch_size_training``, ``model_state_dict``, ``model_architecture``,
``optimizer_model_state_dict``, ``optimizer_centerloss_state_dict``,
``learning_rate_scheduler_state_dict``) plus what an exact resume needs: ``criterion_state_dict``
(classifier and centres), ``scaler_state_dict``, ``trainer_state_dict``, ``rng_state``, ``split``,
``image_size``, ``metrics``, ``lfw_threshold`` and ``config``.

:class:`TrainingState` is the ``state_dict``/``load_state_dict`` object Ignite's ``Checkpoint``
saves; :class:`Resume` is what an experiment calls for ``--resume_path`` / ``--finetune``.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import numbers
import os
import pickle
import random
import re
import warnings
import zipfile
from typing import Any, Mapping

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from faceignite import __version__
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")

FORMAT = "faceignite-checkpoint"
FORMAT_VERSION = 1
ORIGINAL_KEYS = ("epoch", "num_classes", "embedding_dimension", "batch_size_training",
                 "model_state_dict", "model_architecture", "optimizer_model_state_dict",
                 "optimizer_centerloss_state_dict", "learning_rate_scheduler_state_dict")
RESUME_KEYS = ORIGINAL_KEYS + ("criterion_state_dict", "scaler_state_dict", "trainer_state_dict",
                               "rng_state", "split")
# File names written by handlers/checkpoint.py (Ignite's "{prefix}_{name}_{step}..." pattern).
LATEST_PREFIX, BEST_PREFIX, NAME = "training", "best", "checkpoint"
LATEST_RE = re.compile(rf"^{LATEST_PREFIX}_{NAME}_(\d+)\.pt$")
BEST_RE = re.compile(rf"^{BEST_PREFIX}_{NAME}_(\d+)_(\w+)=([-+0-9.eE]+|nan|inf)\.pt$")
# Options a resumed run must share with its checkpoint (name in the checkpoint config, option).
TRAJECTORY_OPTIONS = ("batch_size", "image_size", "seed", "optimizer", "lr_scheduler")
_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


# --------------------------------------------------------------------------- reading safely
def latest_checkpoint(folder: str) -> str | None:
    """The ``training_checkpoint_<iteration>.pt`` with the highest iteration in ``folder``."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := LATEST_RE.match(name))]
    return os.path.join(folder, max(found)[1]) if found else None


def resolve_checkpoint_path(path: str) -> str:
    """``path`` itself, or for a run folder its latest training checkpoint."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise FaceIgniteError(f"no {LATEST_PREFIX}_{NAME}_<iteration>.pt in folder {path}: "
                                  f"pass a checkpoint file to --resume_path")
        return latest
    if not os.path.isfile(path):
        raise FaceIgniteError(f"checkpoint not found: {path}")
    return path


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, every failure turned into one clear error.

    A file holding other Python objects than tensors and plain containers (a pickle that could
    run code) is refused without executing anything; a truncated or corrupt file is named.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note about the pickle protocol
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            try:
                names = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # noqa: BLE001 - only for the message
                names = "unknown"
            raise FaceIgniteError(
                f"refusing to load {path}: it holds Python objects ({names}) that loading would "
                f"have to execute, not only tensors; faceignite loads weights only") from None
        raise FaceIgniteError(f"{path} is not a readable PyTorch checkpoint (corrupt, or another "
                              f"format): {_first_line(exc)}") from None
    except FileNotFoundError:
        raise FaceIgniteError(f"checkpoint not found: {path}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FaceIgniteError(f"checkpoint {path} is truncated or corrupt "
                              f"({exc.__class__.__name__}: {_first_line(exc) or 'empty file'}); "
                              f"use an earlier checkpoint of its folder") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0][:200] if text else ""


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Read a training checkpoint (a file, or a run folder → its latest) safely; return its dict.

    Raises :class:`FaceIgniteError` for a missing, truncated, corrupt, unsafe or non-faceignite
    file.  The dict gets ``"path"`` (the file read) added.
    """
    path = resolve_checkpoint_path(path)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict):
        raise FaceIgniteError(f"{path} is not a training checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    missing = [k for k in ("model_state_dict", "model_architecture", "embedding_dimension")
               if k not in ckpt]
    if missing:
        raise FaceIgniteError(f"{path} is not a faceignite training checkpoint: no "
                              f"{', '.join(missing)}")
    ckpt["path"] = path
    return ckpt


# --------------------------------------------------------------------------- compatibility
def check_compatible(ckpt: Mapping, architecture: str | None = None, num_classes: int | None = None,
                     embedding_dim: int | None = None, finetune_hint: bool = True) -> None:
    """Raise :class:`FaceIgniteError` naming every mismatch between ``ckpt`` and this run."""
    wanted = (("architecture", "model_architecture", architecture, "--model"),
              ("number of classes", "num_classes", num_classes, "--dataroot"),
              ("embedding size", "embedding_dimension", embedding_dim, "--embedding_dim"))
    problems = [f"{what} {ckpt.get(key)} in the checkpoint, {value} here ({option})"
                for what, key, value, option in wanted
                if value is not None and ckpt.get(key) is not None and ckpt.get(key) != value]
    if problems:
        hint = ("; --finetune loads its backbone alone" if finetune_hint
                and architecture in (None, ckpt.get("model_architecture")) else "")
        raise FaceIgniteError(f"checkpoint {ckpt.get('path', '')} does not fit this model: "
                              f"{'; '.join(problems)}{hint}")


def check_options(ckpt: Mapping, cfg: argparse.Namespace) -> None:
    """A resumed run keeps the batch size, image size, seed (data order), optimizer, LR schedule."""
    saved = dict(ckpt.get("config") or {})
    saved.setdefault("batch_size", ckpt.get("batch_size_training"))
    saved.setdefault("image_size", ckpt.get("image_size"))
    problems = [f"--{name} {saved[name]} (checkpoint) vs {getattr(cfg, name)} (here)"
                for name in TRAJECTORY_OPTIONS
                if saved.get(name) is not None
                and getattr(cfg, name, None) not in (None, saved[name])]
    if problems:
        raise FaceIgniteError(f"cannot resume {ckpt.get('path', '')} exactly with other options: "
                              f"{'; '.join(problems)}: pass the checkpoint's values (or --finetune "
                              f"to start a new run from its weights)")


# --------------------------------------------------------------------------- state objects
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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DataParallel / DDP wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def num_classes_of(criterion: nn.Module) -> int | None:
    classifier = getattr(criterion, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return classifier.out_features
    centers = getattr(getattr(criterion, "center_loss", None), "centers", None)
    return int(centers.shape[0]) if centers is not None else None


def index_digest(classes: list[str], files: list[list[str]]) -> str:
    """A fingerprint of an image index (identity and file names, in order)."""
    h = hashlib.sha1()
    for name, names in zip(classes, files):
        h.update(name.encode())
        h.update(b"\0" + "\0".join(names).encode() + b"\n")
    return h.hexdigest()


def dataset_split(data: Any) -> dict:
    """The train/validation split of a :class:`~faceignite.data.FaceData`, as tensors."""
    index = data.index
    return {"train_indices": torch.tensor(data.train_indices, dtype=torch.int32),
            "val_indices": torch.tensor(data.val_indices, dtype=torch.int32),
            "num_images": len(index), "index_digest": index_digest(index.classes, index.files)}


def plain_config(config: Mapping | argparse.Namespace | None) -> dict:
    """Options as JSON-plain values, leaving out anything that looks like a credential."""
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    plain = {}
    for k, v in (config or {}).items():
        if any(w in k.lower() for w in _SECRET_WORDS):
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            plain[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str))
                                                  for x in v):
            plain[k] = list(v)
    return plain


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
    the training sampler (set for a mid-epoch resume); ``config`` the run's options (kept as
    plain values).  :meth:`load_state_dict` first checks that the checkpoint fits (architecture,
    classes, embedding size, optimizers, data set, epoch length) and raises
    :class:`FaceIgniteError` naming the mismatch before changing anything.

    Distributed runs: rank 0's Ignite ``Checkpoint`` writes the file; every process loads it.
    Files hold the plain modules' weights (no ``module.`` prefixes) and the batch of all
    processes together (``batch_size_training``), so a checkpoint resumes with any number of
    processes, mid-epoch too: iterations are global (see ``build_face_data``), and each
    process skips ``iterations done x its per-process batch`` of its shard.
    """

    def __init__(self, trainer: Engine, model: nn.Module, criterion: nn.Module,
                 optimizers: Mapping[str, torch.optim.Optimizer], lr_scheduler: Any = None,
                 data: Any = None, config: Mapping | argparse.Namespace | None = None,
                 scaler: torch.amp.GradScaler | None = None):
        self.trainer, self.model, self.criterion = trainer, model, criterion
        self.optimizers, self.lr_scheduler, self.data = optimizers, lr_scheduler, data
        self.config = plain_config(config)
        self.scaler = scaler if scaler is not None else getattr(trainer.state, "scaler", None)
        self.split = dataset_split(data) if data is not None else None
        self.image_size = getattr(data, "image_size", None) or self.config.get("image_size")
        loader = getattr(data, "train_loader", None)
        self.world_size = idist.get_world_size()
        self.process_batch_size = getattr(loader, "batch_size", None)  # what each process loads
        self.batch_size = (self.process_batch_size * self.world_size if self.process_batch_size
                           else self.config.get("batch_size"))  # all processes together

    def state_dict(self) -> dict:
        model = unwrap(self.model)
        opt_model, opt_centers = self.optimizers.get("model"), self.optimizers.get("centers")
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
            "optimizer_model_state_dict": opt_model.state_dict() if opt_model else None,
            "optimizer_centerloss_state_dict": opt_centers.state_dict() if opt_centers else None,
            "learning_rate_scheduler_state_dict": (self.lr_scheduler.state_dict()
                                                   if self.lr_scheduler is not None else None),
            # what an exact resume needs besides
            "iteration": state.iteration,
            "world_size": self.world_size,
            "optimizer_classes": {k: type(o).__name__ for k, o in self.optimizers.items()},
            "criterion_state_dict": unwrap(self.criterion).state_dict(),
            "scaler_state_dict": self.scaler.state_dict() if self.scaler is not None else {},
            "trainer_state_dict": dict(self.trainer.state_dict()),
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
        unwrap(self.criterion).load_state_dict(ckpt["criterion_state_dict"])
        for name, key in (("model", "optimizer_model_state_dict"),
                          ("centers", "optimizer_centerloss_state_dict")):
            if name in self.optimizers and ckpt.get(key) is not None:
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
        mid_epoch = self._position_sampler()
        rng, saved_rng = RNGState(), ckpt["rng_state"]
        if mid_epoch:  # after the resumed epoch's data iterator has drawn its seed, as it had then
            first = self.trainer.state.iteration + 1
            self.trainer.add_event_handler(
                Events.ITERATION_STARTED(event_filter=lambda _, i: i == first),
                lambda _: rng.load_state_dict(saved_rng))
        else:
            rng.load_state_dict(saved_rng)

    def _position_sampler(self) -> bool:
        """Select the resumed epoch in the training sampler, skipping the samples already seen;
        return whether the run resumes in the middle of an epoch."""
        state = self.trainer.state
        if not state.epoch_length:
            return False
        done = state.iteration % state.epoch_length
        sampler = getattr(getattr(self.data, "train_loader", None), "sampler", None)
        if hasattr(sampler, "set_epoch"):  # global iterations: this process's share of each
            sampler.set_epoch(state.iteration // state.epoch_length,
                              skip=done * (self.process_batch_size or self.batch_size or 0))
        return done > 0


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


class Resume:
    """``--resume_path`` / ``--finetune`` for an experiment: read the file before the data is
    built (to reuse its split), then :meth:`restore` once every object exists.

        resume = Resume.from_options(cfg)
        data = build_face_data(cfg, val_indices=resume.val_indices)
        ...
        resume.restore(TrainingState(trainer, model, criterion, optimizers, scheduler, data, cfg))
    """

    def __init__(self, ckpt: Mapping | None = None, finetune: bool = False,
                 max_epochs: int | None = None):
        self.ckpt, self.finetune, self.max_epochs = ckpt, finetune, max_epochs

    @classmethod
    def from_options(cls, cfg: argparse.Namespace) -> "Resume":
        """Load and check ``cfg.resume_path`` (nothing when it is not set)."""
        if not cfg.resume_path:
            if cfg.finetune:
                raise FaceIgniteError("--finetune needs --resume_path CHECKPOINT")
            return cls()
        ckpt = load_checkpoint(cfg.resume_path)
        if cfg.finetune:
            check_compatible(ckpt, architecture=cfg.model, finetune_hint=False)
        else:
            check_compatible(ckpt, architecture=cfg.model, embedding_dim=cfg.embedding_dim)
            check_options(ckpt, cfg)
            done = ckpt.get("trainer_state_dict", {})
            length = done.get("epoch_length")
            if length and done.get("iteration", 0) >= cfg.epochs * length:
                raise FaceIgniteError(f"{ckpt['path']} has already trained {ckpt.get('epoch')} "
                                      f"epochs; pass --epochs above {ckpt.get('epoch')} to go on")
        before = (ckpt.get("config") or {}).get("epochs")
        if not cfg.finetune and before not in (None, cfg.epochs):
            logger.warning("--epochs %s (the checkpoint's run: %s): the LR schedule goes on as "
                           "built for %s epochs", cfg.epochs, before, before)
        logger.info("%s from %s (epoch %s, iteration %s)", "finetuning" if cfg.finetune else
                    "resuming", ckpt["path"], ckpt.get("epoch"), ckpt.get("iteration"))
        return cls(ckpt, cfg.finetune, cfg.epochs)

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
        else:
            state.load_state_dict(self.ckpt)
        self.ckpt = {"path": self.path}  # free the tensors
