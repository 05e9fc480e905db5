"""A seeded, epoch-aware shuffling sampler that also carries per-sample augmentation seeds, and
:func:`follow_trainer`, which keeps a training loader's sampler on the trainer's epoch and
position (so that the sampler's ``state_dict`` is what a checkpoint needs to resume)."""
from __future__ import annotations

import math
from typing import Iterator, Mapping

import numpy as np
from ignite.engine import Engine, Events
from torch.utils.data import Sampler

from faceignite.data.dataset import sample_seed


class ResumableSampler(Sampler):
    """What a checkpoint saves of a sampler: ``seed``, ``epoch`` and ``position`` (samples taken
    by all processes together, so a run resumes with another number of processes).  Subclasses
    keep ``seed``, ``epoch``, ``position`` (this process's samples) and ``num_replicas``, and
    position themselves in :meth:`set_epoch`."""

    def state_dict(self) -> dict:
        """``seed``, ``epoch`` and ``position`` (samples taken by all processes together)."""
        return {"seed": self.seed, "epoch": self.epoch,
                "position": self.position * self.num_replicas}

    def load_state_dict(self, state: Mapping) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), int(state["position"]) // self.num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        raise NotImplementedError


class EpochSampler(ResumableSampler):
    """Yields ``(index, augmentation seed)``; the order depends only on (seed, epoch).

    State: ``seed``, ``epoch`` and ``position`` (samples of this process's share the trainer has
    taken in the epoch, advanced by :func:`follow_trainer`).  :meth:`state_dict` /
    :meth:`load_state_dict` save and restore them, the position counted over all processes so
    that a checkpoint resumes with another number of processes; the next iteration after a load
    (or ``set_epoch(epoch, skip)``) starts at the position, later ones at the epoch's start.
    With ``num_replicas > 1`` each rank takes an equal, disjoint, interleaved share of the
    permutation (padded by wrapping, as ``DistributedSampler`` does).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0  # samples of this rank's share taken in ``epoch``
        self.skip = 0  # where the next iteration starts (once)
        self.per_replica = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch``; its next iteration skips the first ``skip`` samples of this rank."""
        self.epoch = epoch
        self.position = self.skip = min(skip, self.per_replica)

    def advance(self, samples: int) -> None:
        """The trainer took ``samples`` more samples of this rank's share."""
        self.position = min(self.position + samples, self.per_replica)

    def __len__(self) -> int:
        return self.per_replica - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.per_replica * self.num_replicas
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        mine = order[self.rank:total:self.num_replicas][self.skip:]
        self.skip = 0  # only the resumed epoch is shortened
        for i in mine.tolist():
            yield i, sample_seed(self.seed, self.epoch, i)


def follow_trainer(trainer: Engine) -> None:
    """Keep the sampler of the loader ``trainer`` runs on at the trainer's epoch and position.

    At each ``EPOCH_STARTED`` the sampler moves to epoch ``trainer.state.epoch - 1`` unless it is
    there already (a resumed epoch keeps its restored position); at each ``ITERATION_STARTED``
    (when Ignite counts the iteration as done) it advances by the loader's batch size.  Both
    events precede every handler that could save a checkpoint of the iteration, so the saved
    sampler state always matches the saved trainer state.  Samplers without ``set_epoch`` are
    left alone.
    """

    def sampler_of(engine: Engine):
        sampler = getattr(engine.state.dataloader, "sampler", None)
        return sampler if hasattr(sampler, "set_epoch") else None

    @trainer.on(Events.EPOCH_STARTED)
    def _select_epoch(engine: Engine) -> None:
        sampler = sampler_of(engine)
        if sampler is not None and getattr(sampler, "epoch", None) != engine.state.epoch - 1:
            sampler.set_epoch(engine.state.epoch - 1)

    @trainer.on(Events.ITERATION_STARTED)
    def _advance(engine: Engine) -> None:
        sampler = sampler_of(engine)
        if sampler is not None and hasattr(sampler, "advance"):
            sampler.advance(getattr(engine.state.dataloader, "batch_size", None) or 1)
