"""From options to data loaders: index, split, datasets, samplers (the built-in data by default)."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import ignite.distributed as idist
import numpy as np
import torch
from torch.utils.data import DataLoader

from faceignite.data.builtin import ensure_builtin_dataset
from faceignite.data.dataset import FaceImageDataset, collate_skip_bad
from faceignite.data.index import (ImageIndex, cache_folder, default_cache_path,
                                   load_or_build_index)
from faceignite.data.pk_sampler import pk_sampler_from_options
from faceignite.data.record_index import (RecordIndex, load_or_build_record_index,
                                          record_files)
from faceignite.data.sampler import EpochSampler
from faceignite.data.split import stratified_split
from faceignite.data.triplet_sampler import RandomTripletSampler
from faceignite.data.normalization import resolve as resolve_normalization
from faceignite.data.transforms import eval_transform, train_transform
from faceignite.errors import FaceIgniteError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataOptions:
    """The options :func:`build_face_data` reads (``--dataroot``, ``--batch_size``, ...), as one
    small typed group; the composition makes it with
    ``faceignite.config.options_group(cfg, DataOptions)``.

    ``dataroot`` None: the built-in data (generated under ``output_dir/cache``).  ``batch_size``:
    images of all processes together.  ``image_size`` in pixels.  ``device``: the ``--device``
    text (pinned memory unless ``cpu``)."""

    image_size: int
    batch_size: int
    dataroot: str | None = None
    output_dir: str = "runs"
    index_cache: str | None = None
    lfw: str | None = None
    lfw_pairs: str | None = None
    valid_split: float = 0.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    model: str = "resnet34"
    normalize: str | None = None
    augment: str | None = None
    triplet_mining: str | None = None
    n_triplets: int | None = None
    images_per_identity: int | None = None
    identities_per_batch: int | None = None


@dataclass
class FaceData:
    """What a training recipe needs from the data side.

    ``resolved``: the options the data side decided (the index cache file used, the identities
    per P x K batch) for the composition to record in ``config.json``."""

    index: ImageIndex
    train_loader: DataLoader
    val_loader: DataLoader | None
    train_indices: list[int]
    val_indices: list[int]
    image_size: int
    lfw_dir: str | None = None
    lfw_pairs: str | None = None
    builtin: bool = False
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def train_sampler(self) -> EpochSampler:
        return self.train_loader.sampler


def make_loader(dataset: FaceImageDataset, batch_size: int, num_workers: int,
                sampler: EpochSampler, drop_last: bool, pin_memory: bool) -> DataLoader:
    """A DataLoader with the speed settings (pinned memory, persistent workers, prefetching)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_skip_bad, drop_last=drop_last, pin_memory=pin_memory,
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
    )


def drop_last(num_images: int, batch_size: int, remainder: int) -> bool:
    """Whether the training loader drops its last, partial batch: when the set holds two full
    batches (``batch_size`` of all processes together; an epoch then loses less than half a
    batch), and always when that batch would hold one image (``remainder``: images in a
    process's last batch), which BatchNorm cannot train on.  A smaller partial batch is kept
    on a small set, where dropping it would drop much of the data."""
    return num_images >= batch_size * 2 or remainder == 1


@contextlib.contextmanager
def rank_zero_first(num_replicas: int, rank: int) -> Iterator[None]:
    """Rank 0 runs the block first (generating data, writing the index cache), the other
    processes after it, reading what it wrote (Ignite's ImageNet reference does the same).
    If rank 0 fails there, the others still go on to fail with the same error, not wait."""
    if num_replicas > 1 and rank > 0:
        idist.barrier()
    try:
        yield
    finally:
        if num_replicas > 1 and rank == 0:
            idist.barrier()


def per_process_batch_size(batch_size: int, num_replicas: int) -> int:
    """``batch_size // num_replicas``, as Ignite's ``auto_dataloader`` divides it."""
    if batch_size < num_replicas:
        raise FaceIgniteError(f"--batch_size {batch_size} is the batch of all {num_replicas} "
                              f"processes together: give at least {num_replicas}")
    per_process = batch_size // num_replicas
    if per_process * num_replicas != batch_size:
        logger.warning("--batch_size %d is not a multiple of the %d processes: %d per process, "
                       "%d in all", batch_size, num_replicas, per_process,
                       per_process * num_replicas)
    return per_process


def warn_identities_without_holdout(labels: Sequence[int], val_idx: Sequence[int],
                                    valid_split: float) -> int:
    """Say at start when ``--valid_split`` holds out no image of some identities (each keeps
    ``round(images x valid_split)`` held out, and at least one for training); return how many."""
    if valid_split <= 0:
        return 0
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    held = np.bincount(labels[np.asarray(val_idx, dtype=np.int64)], minlength=len(counts))
    ids = counts > 0
    none = int(((held == 0) & ids).sum())
    if none:
        needed = max(2, int(0.5 / valid_split) + 1)
        what = ("no image at all: there is no held-out validation"
                if none == int(ids.sum()) else
                f"no image of {none} of {int(ids.sum())} identities")
        logger.warning("--valid_split %s holds out %s (an identity needs about %d images for "
                       "one to be held out); raise --valid_split, or use --lfw/--val_targets "
                       "to validate", valid_split, what, needed)
    return none


def build_face_data(cfg: DataOptions, val_indices: list[int] | None = None,
                    num_replicas: int = 1, rank: int = 0) -> FaceData:
    """Index ``cfg.dataroot`` (or generate the built-in data), split it, and build the loaders
    (``cfg``: the :class:`DataOptions` group, never the whole options).

    ``val_indices`` (from a checkpoint) replaces the seeded split, so a resumed run validates on
    exactly the images it held out before.

    Distributed (``num_replicas`` processes, this one ``rank``): ``cfg.batch_size`` is the
    batch of all processes together; each loads ``batch_size // num_replicas`` images (as
    ``idist.auto_dataloader`` does) from its shard of the same seeded permutation, so that step
    ``k`` covers together the images of step ``k`` of a single-process run, with the same
    augmentations, and an epoch has the same number of iterations whatever the number of
    processes.  P x K batches (``--images_per_identity``) are per process instead.
    """
    builtin = cfg.dataroot is None
    lfw_dir, lfw_pairs = cfg.lfw, cfg.lfw_pairs
    with rank_zero_first(num_replicas, rank):
        if builtin:
            root, pairs_root = ensure_builtin_dataset(cache_folder(cfg.output_dir))
            if lfw_dir is None:
                lfw_dir, lfw_pairs = pairs_root, os.path.join(pairs_root, "pairs.txt")
        else:
            root = cfg.dataroot
        cache_path = cfg.index_cache or default_cache_path(root, cfg.output_dir)
        resolved = {"index_cache": cache_path}  # config.json records the file used
        if record_files(root) is not None:  # a .rec file, or a folder holding train.rec
            index = load_or_build_record_index(root, cache_path)
        else:
            index = load_or_build_index(root, cache_path)
    labels = index.labels()
    if val_indices is None:
        train_idx, val_idx = stratified_split(labels, cfg.valid_split, cfg.seed)
    else:
        val_idx = sorted(val_indices)
        if val_idx and val_idx[-1] >= len(labels):
            raise FaceIgniteError(
                f"the checkpoint's held-out split names image {val_idx[-1]} but {root} now holds "
                f"{len(labels)} images: the training folder changed since it was saved; resume "
                f"on the same data, or --finetune to start a new run from its weights")
        held = set(val_idx)
        train_idx = [i for i in range(len(labels)) if i not in held]
    warn_identities_without_holdout(labels, val_idx, cfg.valid_split)
    if len(train_idx) < 2:
        raise FaceIgniteError(
            f"{'the built-in data' if builtin else root} leaves {len(train_idx)} training "
            f"image(s) after the held-out split (--valid_split {cfg.valid_split}): BatchNorm "
            f"needs at least 2; add images or lower --valid_split")
    if len(index.classes) < 2:
        raise FaceIgniteError(
            f"{'the built-in data' if builtin else root} holds one identity "
            f"({index.classes[0]}): a model trained to tell one person from nobody learns "
            f"nothing; give --dataroot a folder of two or more identity folders")
    samples = index.samples()
    read = {"read": index.image_reader()} if isinstance(index, RecordIndex) else {}
    pin = torch.cuda.is_available() and cfg.device != "cpu"
    normalization = resolve_normalization(cfg.normalize, cfg.model)
    augment = cfg.augment or "box"
    train_set = FaceImageDataset([samples[i] for i in train_idx],
                                 train_transform(cfg.image_size, normalization, augment), **read)
    if cfg.triplet_mining == "random":  # --n_triplets random triplets
        triplets = per_process_batch_size(cfg.batch_size, num_replicas)  # triplets per batch
        sampler = RandomTripletSampler(train_set.targets, cfg.n_triplets or len(train_set),
                                       cfg.seed, num_replicas, rank)
        logger.info("random triplets: %d per epoch, %d per batch", sampler.n_triplets, triplets)
        train_loader = make_loader(train_set, 3 * triplets, cfg.num_workers, sampler,
                                   drop_last=False, pin_memory=pin)
    elif cfg.images_per_identity:  # P x K identity-balanced batches (triplets)
        pk = pk_sampler_from_options(train_set.targets, cfg.batch_size, cfg.images_per_identity,
                                     cfg.identities_per_batch, cfg.seed, num_replicas, rank)
        logger.info("P x K batches: %d identities x %d images", pk.p, pk.k)
        resolved["identities_per_batch"] = cfg.identities_per_batch or pk.p  # in config.json
        train_loader = make_loader(train_set, pk.batch_size, cfg.num_workers, pk,
                                   drop_last=False, pin_memory=pin)
    else:
        batch_size = per_process_batch_size(cfg.batch_size, num_replicas)
        sampler = EpochSampler(len(train_set), cfg.seed, True, num_replicas, rank)
        train_loader = make_loader(train_set, batch_size, cfg.num_workers, sampler,
                                   drop_last=drop_last(len(train_set), cfg.batch_size,
                                                       len(sampler) % batch_size),
                                   pin_memory=pin)
    val_loader = None
    if val_idx:
        val_set = FaceImageDataset([samples[i] for i in val_idx], eval_transform(cfg.image_size, normalization),
                                   **read)
        val_loader = make_loader(val_set, max(1, cfg.batch_size // num_replicas), cfg.num_workers,
                                 EpochSampler(len(val_set), cfg.seed, False, num_replicas, rank),
                                 drop_last=False, pin_memory=pin)
    logger.info("data: %d identities, %d training / %d held-out images at %d px, --augment %s, "
                "--normalize %s", len(index.classes), len(train_idx), len(val_idx),
                cfg.image_size, augment, normalization.name)
    return FaceData(index, train_loader, val_loader, train_idx, val_idx, cfg.image_size,
                    lfw_dir, lfw_pairs, builtin, resolved)
