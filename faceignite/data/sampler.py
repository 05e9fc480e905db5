"""A seeded, epoch-aware shuffling sampler that also carries per-sample augmentation seeds."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from faceignite.data.dataset import sample_seed


class EpochSampler(Sampler):
    """Yields ``(index, augmentation seed)``; the order depends only on (seed, epoch).

    ``set_epoch(epoch, skip)`` selects the epoch and skips its first ``skip`` samples (to resume
    in the middle of an epoch).  With ``num_replicas > 1`` each rank takes an equal, disjoint
    share of the permutation (padded by wrapping, as ``DistributedSampler`` does).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip = 0
        self.per_replica = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

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
