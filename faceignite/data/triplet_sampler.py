"""``--triplet_mining random --n_triplets N``: an epoch is N random (anchor, positive, negative)
triplets, drawn as the second original system (``train_triplet.py``) drew them.

Each triplet: a positive identity, uniform over the identities with at least two images; a
negative identity, uniform over the others; two distinct images of the first (anchor, positive)
and one of the second (negative).  The draw depends only on (seed, epoch), so a run is
reproducible with ``--seed`` and a checkpoint resumes mid-epoch on the same sequence.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from faceignite.data.dataset import sample_seed
from faceignite.data.sampler import ResumableSampler
from faceignite.errors import FaceIgniteError


class RandomTripletSampler(ResumableSampler):
    """Yields ``(index, augmentation seed)`` keys, three per triplet: anchor, positive, negative.

    A loader with ``batch_size = 3 * T`` then gives batches of ``T`` triplets in that order
    (what :func:`faceignite.losses.triplet.given_triplets` reads).  State (``seed``, ``epoch``,
    ``position`` in keys), :meth:`state_dict`, :meth:`load_state_dict`, ``set_epoch(epoch,
    skip)`` and :func:`~faceignite.data.sampler.follow_trainer` work as the ``EpochSampler``'s,
    positions rounded down to whole triplets.  With ``num_replicas > 1`` each rank takes every
    ``num_replicas``-th triplet (the last wrapped round, as ``DistributedSampler`` pads).
    """

    def __init__(self, labels: Sequence[int], n_triplets: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        self.labels = np.asarray(labels)
        classes, counts = np.unique(self.labels, return_counts=True)
        if len(classes) < 2 or counts.max(initial=0) < 2:
            raise FaceIgniteError("--triplet_mining random needs two identities, one of them "
                                  "with two or more training images")
        if n_triplets < 1:
            raise FaceIgniteError(f"--n_triplets {n_triplets}: must be greater than 0")
        self.order = np.argsort(self.labels, kind="stable")  # images grouped by identity
        self.starts = np.searchsorted(self.labels[self.order], classes)
        self.counts = counts
        self.eligible = np.flatnonzero(counts >= 2)  # positions in ``classes``
        self.n_triplets, self.seed = n_triplets, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.per_replica = math.ceil(n_triplets / num_replicas)  # triplets of this rank
        self.epoch = 0
        self.position = 0  # keys of this rank taken in ``epoch``
        self.skip = 0  # where the next iteration starts (once)

    def triplets(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's ``n_triplets`` × 3 image indices (anchor, positive, negative), all ranks."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        n, classes = self.n_triplets, len(self.counts)
        pos = self.eligible[rng.integers(len(self.eligible), size=n)]
        neg = (pos + rng.integers(1, classes, size=n)) % classes  # any other identity
        anchor = rng.integers(self.counts[pos])
        positive = rng.integers(self.counts[pos] - 1)
        positive += positive >= anchor  # distinct from the anchor
        negative = rng.integers(self.counts[neg])
        picks = np.stack([self.starts[pos] + anchor, self.starts[pos] + positive,
                          self.starts[neg] + negative], axis=1)
        return self.order[picks]

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch``; its next iteration skips the first ``skip`` keys of this rank
        (rounded down to whole triplets)."""
        self.epoch = epoch
        skip = min(skip, 3 * self.per_replica)
        self.position = self.skip = skip - skip % 3

    def advance(self, samples: int) -> None:
        """The trainer took ``samples`` more keys of this rank."""
        self.position = min(self.position + samples, 3 * self.per_replica)

    def __len__(self) -> int:
        return 3 * self.per_replica - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        triplets = self.triplets()
        total = self.per_replica * self.num_replicas
        if total > len(triplets):
            triplets = np.concatenate([triplets, triplets[: total - len(triplets)]])
        keys = triplets[self.rank:total:self.num_replicas].reshape(-1)
        first = self.skip
        self.skip = 0  # only the resumed epoch is shortened
        for position in range(first, len(keys)):
            i = int(keys[position])
            yield i, sample_seed(self.seed, self.epoch, i, self.rank, position)
