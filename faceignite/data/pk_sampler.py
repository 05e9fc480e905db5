"""P×K identity-balanced batches for triplet mining: P identities × K images in every batch."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from faceignite.data.dataset import sample_seed
from faceignite.data.sampler import ResumableSampler
from faceignite.errors import FaceIgniteError


class _Cycle:
    """Endless draws from ``items``, reshuffled each time it runs out (every item once per pass)."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator):
        self.items, self.rng = items, rng
        self.pending: list[int] = []  # reversed: the next draw is the last element

    def take(self, n: int, distinct: bool = False) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if not self.pending:
                perm = self.rng.permutation(self.items).tolist()
                if distinct:  # a pass starting mid-batch puts this batch's items last
                    perm = [i for i in perm if i not in out] + [i for i in perm if i in out]
                self.pending = perm[::-1]
            out.append(self.pending.pop())
        return out


class PKSampler(ResumableSampler):
    """Yields ``(index, augmentation seed)`` keys, ``P x K`` consecutive keys forming one batch.

    Each batch holds ``P`` distinct identities with ``K`` images each (drawn with repeats, each
    with its own augmentation seed, when an identity has fewer than ``K``).  Identities, and the
    images of each identity, are drawn in reshuffled passes so that all are used evenly.  An epoch
    has ``len(labels) // (P·K)`` batches (at least one); the draw depends only on (seed, epoch).

    The keys come flat, like :class:`~faceignite.data.sampler.EpochSampler`'s, so that the loader
    uses it as its ``sampler`` with ``batch_size = P·K``; its state (``seed``, ``epoch``,
    ``position``), :meth:`state_dict`, :meth:`load_state_dict`, ``set_epoch(epoch, skip)`` and
    :func:`~faceignite.data.sampler.follow_trainer` work as the ``EpochSampler``'s, positions
    rounded down to whole batches.  :meth:`batches` gives the same keys as lists, one per batch.
    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch.
    """

    def __init__(self, labels: Sequence[int], identities_per_batch: int, images_per_identity: int,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.labels = np.asarray(labels)
        self.p, self.k = identities_per_batch, images_per_identity
        classes = np.unique(self.labels)
        if self.p < 2 or self.k < 1:
            raise FaceIgniteError(f"P x K batches need --identities_per_batch >= 2 and "
                                  f"--images_per_identity >= 1 (got P={self.p}, K={self.k})")
        if len(classes) < self.p:
            raise FaceIgniteError(
                f"--identities_per_batch {self.p} exceeds the {len(classes)} identities of the "
                f"training set: lower it (or --batch_size)")
        order = np.argsort(self.labels, kind="stable")
        starts = np.searchsorted(self.labels[order], classes)
        self.members = dict(zip(classes.tolist(), np.split(order, starts[1:])))
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self.position = 0  # samples of this rank's batches taken in ``epoch``
        self.skip = 0  # where the next iteration starts (once)
        batches = max(1, len(self.labels) // self.batch_size)
        self.batches_per_replica = math.ceil(batches / num_replicas)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch; its next iteration skips the first ``skip`` samples of this rank,
        rounded down to whole batches."""
        self.epoch = epoch
        skip = min(skip, self.batches_per_replica * self.batch_size)
        self.position = self.skip = skip - skip % self.batch_size

    def advance(self, samples: int) -> None:
        """The trainer took ``samples`` more samples of this rank's batches."""
        self.position = min(self.position + samples, self.batches_per_replica * self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_replica * self.batch_size - self.skip

    def batches(self) -> Iterator[list[tuple[int, int]]]:
        """This rank's batches of the epoch, each a list of ``P·K`` keys (``skip`` not applied)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        identities = _Cycle(np.array(sorted(self.members)), rng)
        images = {c: _Cycle(m, rng) for c, m in self.members.items()}
        for b in range(self.batches_per_replica * self.num_replicas):
            chosen = identities.take(self.p, distinct=True)
            batch = [i for c in chosen for i in images[c].take(self.k)]
            if b % self.num_replicas == self.rank:
                first = b * self.batch_size
                yield [(i, sample_seed(self.seed, self.epoch, i, first + j))
                       for j, i in enumerate(batch)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip // self.batch_size, 0  # only the resumed epoch is shortened
        for b, batch in enumerate(self.batches()):
            if b >= skip:
                yield from batch


def pk_sampler_from_options(labels: Sequence[int], batch_size: int, images_per_identity: int,
                            identities_per_batch: int | None = None, seed: int = 0,
                            num_replicas: int = 1, rank: int = 0) -> PKSampler:
    """A :class:`PKSampler` from the options: ``P`` defaults to ``batch_size // K``."""
    p = identities_per_batch or max(2, batch_size // images_per_identity)
    return PKSampler(labels, p, images_per_identity, seed, num_replicas, rank)
