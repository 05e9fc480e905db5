"""The pairs evaluator: an Ignite engine that embeds each unique image once, and a metric that
runs the verification protocol on the collected embeddings.

In a distributed run (``idist.get_world_size() > 1``) each process embeds every
``world_size``-th image and the metric gathers all embeddings (``idist.all_gather``) before the
protocol runs, on every process: the metrics equal a single-process evaluation's.  Every process
must then run the evaluator together."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from torch import nn
from torch.utils.data import DataLoader

from faceignite.checkpoint import unwrap
from faceignite.cli import progress_enabled
from faceignite.data.dataset import FaceImageDataset, collate_skip_bad
from faceignite.data.normalization import Normalization, of_model
from faceignite.data.transforms import eval_transform
from faceignite.runtime import Runtime
from faceignite.errors import FaceIgniteError
from faceignite.verification.metrics import FAR_TARGETS, VerificationResult, evaluate_embeddings
from faceignite.verification.pairs import Pairs, find_pairs_file, keep_available, read_pairs, resolve_images

logger = logging.getLogger("faceignite")


def embedding_function(model: nn.Module | Callable[[torch.Tensor], torch.Tensor]):
    """``model.embed`` when the model has one, else the model (any callable) itself.

    A ``DistributedDataParallel`` (or compiled) model is unwrapped first: evaluation runs on
    the plain module, whose forward does not synchronise the processes."""
    if isinstance(model, nn.Module):
        model = unwrap(model)
    return getattr(model, "embed", model)


def gather_embeddings(indices: torch.Tensor, embeddings: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``(image indices, embeddings)`` rows, concatenated (on the CPU).

    Processes may hold different numbers of rows (shards of unequal size, undecodable images),
    none at all too.  A no-op in a single process.
    """
    if idist.get_world_size() == 1:
        return indices, embeddings
    device = torch.device("cpu") if idist.backend() == "gloo" else idist.device()
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    sizes = idist.all_gather(torch.tensor([len(indices), dim], device=device)).view(-1, 2).cpu()
    dim = int(sizes[:, 1].max())
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:  # no rows here
        embeddings = torch.zeros(0, dim)
    counts = [int(n) for n in sizes[:, 0]]
    gathered_e = idist.all_gather_tensors_with_shapes(embeddings.float().to(device),
                                                      [[n, dim] for n in counts])
    gathered_i = idist.all_gather_tensors_with_shapes(indices.long().to(device),
                                                      [[n] for n in counts])
    return torch.cat(gathered_i).cpu(), torch.cat(gathered_e).cpu()


def create_embedding_engine(model: nn.Module | Callable, runtime: Runtime | torch.device | str,
                            flip: bool = False) -> Engine:
    """An engine whose output per batch is ``(L2-normalised embeddings on CPU, image indices)``,
    computed on ``runtime`` (a :class:`~faceignite.runtime.Runtime`, or a device for fp32)
    under its evaluation autocast.

    With ``flip`` each image and its mirror go through the model in one batch and their
    normalised embeddings are averaged (then normalised again).
    """
    embed = embedding_function(model)
    runtime = Runtime.of(runtime)

    @torch.no_grad()
    def step(engine: Engine, batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, index, _ = batch
        if index.numel() == 0:
            return torch.empty(0, 0), index
        if isinstance(model, nn.Module):
            model.eval()
        x = runtime.prepare(images)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        with runtime.eval_autocast():
            e = F.normalize(embed(x).float(), dim=1)
        if flip:
            e = F.normalize(e[: len(index)] + e[len(index):], dim=1)
        return e.cpu(), index

    return Engine(step)


class PairVerification(Metric):
    """Collects ``(embeddings, image indices)`` and computes a :class:`VerificationResult`.

    Images that could not be decoded have no embedding: their pairs fail the evaluation, or
    with ``skip_undecodable`` are dropped with a logged warning (counted in ``skipped_pairs``).
    """

    def __init__(self, pairs: Pairs, paths: list[str], distance: str = "l2",
                 far_targets=FAR_TARGETS, skip_undecodable: bool = False):
        self.pairs, self.paths = pairs, paths
        self.distance, self.far_targets = distance, far_targets
        self.skip_undecodable = skip_undecodable
        super().__init__(output_transform=lambda out: out, device="cpu")

    @reinit__is_reduced
    def reset(self) -> None:
        self._embeddings: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        embeddings, indices = output
        if indices.numel():
            self._embeddings.append(embeddings.detach().cpu())
            self._indices.append(indices.detach().cpu())

    def compute(self) -> VerificationResult:
        pairs = self.pairs
        index, embedded = gather_embeddings(
            torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.long),
            torch.cat(self._embeddings) if self._embeddings else torch.zeros(0, 0))
        if not len(index):
            raise FaceIgniteError(f"none of the {len(pairs.keys)} images of {pairs.path} could be "
                                  f"decoded, e.g. {self.paths[0]}")
        index, embedded = index.numpy(), embedded.numpy()
        rows = np.full(len(pairs.keys), -1, dtype=np.int64)
        rows[index] = np.arange(len(index))
        decoded = {k for k, r in zip(pairs.keys, rows) if r >= 0}
        if len(decoded) < len(pairs.keys):
            pairs = keep_available(pairs, decoded, self.skip_undecodable,
                                   "(truncated, undecodable or removed: each named above)",
                                   dict(zip(self.pairs.keys, self.paths)))
            position = {k: i for i, k in enumerate(self.pairs.keys)}
            rows = rows[[position[k] for k in pairs.keys]]
        result = evaluate_embeddings(embedded[rows], pairs, self.distance, self.far_targets)
        result.skipped_pairs = len(self.pairs) - len(pairs)
        return result


@dataclass
class PairsEvaluator:
    """A ready evaluator for one pairs set: ``run()`` embeds its images and returns the result."""

    engine: Engine
    loader: DataLoader
    pairs: Pairs
    paths: list[str]
    skipped_pairs: int = 0
    name: str = ""                  # shown on the progress bar (default: the pairs file's name)
    progress: bool | None = None    # a progress bar; None: when stderr is a terminal

    def run(self) -> VerificationResult:
        """Embed every unique image once, then compute the metrics (timed in ``seconds``).
        A progress bar of the batches shows on rank 0 (:attr:`progress`)."""
        started = time.perf_counter()
        bar = handle = None
        if progress_enabled(self.progress) and idist.get_rank() == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.loader), unit="batch", leave=False, mininterval=0,
                       desc=self.name or os.path.basename(self.pairs.path))  # every batch
            handle = self.engine.add_event_handler(Events.ITERATION_COMPLETED,
                                                   lambda _: bar.update())
        try:
            self.engine.run(self.loader)
        finally:
            if bar is not None:
                handle.remove()
                bar.close()
        result: VerificationResult = self.engine.state.metrics["verification"]
        result.skipped_pairs += self.skipped_pairs
        result.seconds = {"total": time.perf_counter() - started}
        return result


def image_loader(paths: list[str], image_size: int, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, num_replicas: int = 1, rank: int = 0,
                 normalization: Normalization | None = None) -> DataLoader:
    """Batches ``(images, image indices, skipped)`` of ``paths`` in order, resized and
    normalised as for training (:func:`~faceignite.data.transforms.eval_transform`;
    ``normalization``: the model's convention, ImageNet's when None).

    With ``num_replicas > 1``: only this ``rank``'s share, every ``num_replicas``-th image
    (indices stay those of ``paths``)."""
    samples = [(p, i) for i, p in enumerate(paths)][rank::num_replicas]
    dataset = FaceImageDataset(samples, eval_transform(image_size, normalization))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skip_bad, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def create_pairs_evaluator(model: nn.Module | Callable, lfw_dir: str | None,
                           runtime: Runtime | torch.device | str, image_size: int,
                           pairs_file: str | None = None, batch_size: int = 128,
                           flip: bool = False, distance: str = "l2", skip_missing: bool = False,
                           num_workers: int = 0,
                           skip_undecodable: bool | None = None) -> PairsEvaluator:
    """Read the pairs file (``pairs_file``, or ``pairs.txt``/``lfw_pairs.txt`` in ``lfw_dir``),
    resolve its images under ``lfw_dir`` and build the embedding engine with its metric.

    Problems with the pairs file or missing images raise :class:`FaceIgniteError` here, before
    any training; ``skip_missing`` drops the pairs of missing images instead (logged).  In a
    distributed context the images are sharded over the processes (see the module's note).
    ``runtime``: a :class:`~faceignite.runtime.Runtime`, or a device for fp32.
    """
    runtime = Runtime.of(runtime)
    path = find_pairs_file(lfw_dir, pairs_file)
    pairs = read_pairs(path)
    total = len(pairs)
    root = lfw_dir or os.path.dirname(os.path.abspath(path))
    pairs, paths = resolve_images(pairs, root, skip_missing)
    engine = create_embedding_engine(model, runtime, flip)
    PairVerification(pairs, paths, distance,
                     skip_undecodable=skip_missing if skip_undecodable is None else skip_undecodable
                     ).attach(engine, "verification")
    loader = image_loader(paths, image_size, batch_size, num_workers,
                          runtime.device.type == "cuda", runtime.world_size, runtime.rank,
                          of_model(model))
    logger.info("pairs set %s: %d pairs in %d folds over %d unique images (%d slots), %d px%s",
                path, len(pairs), pairs.num_folds, len(paths), 2 * len(pairs), image_size,
                ", flip TTA" if flip else "")
    return PairsEvaluator(engine, loader, pairs, paths, total - len(pairs))
