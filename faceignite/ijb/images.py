"""Embed IJB loose crops: five-point alignment, flip, batched multi-worker loading, features
streamed to disk.

Each crop is decoded by OpenCV (as RGB, like training), warped with its five landmarks to the
ArcFace 112×112 template scaled to the model's input size (identical at 112 px; no detector),
normalised exactly as the model was trained (:func:`~faceignite.data.transforms.eval_transform`),
and its feature is the raw (not normalised) ``model(image) + model(mirrored image)``, so that the
norm can serve as the protocol's quality score.  Features go straight into a disk-backed ``.npy``
(``numpy.lib.format.open_memmap``): memory stays bounded by one batch, whatever the number of
crops (IJB-C: 469,375).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset

from faceignite.align.five_point import warp_to_template
from faceignite.data.dataset import read_rgb
from faceignite.data.normalization import Normalization, of_model
from faceignite.data.transforms import eval_transform
from faceignite.cli import progress_enabled
from faceignite.errors import FaceIgniteError
from faceignite.runtime import Runtime

logger = logging.getLogger("faceignite")


class AlignedCrops(Dataset):
    """``(normalised CHW tensor, index)`` of each crop aligned by its landmarks; ``(None,
    index)`` when the file does not decode."""

    def __init__(self, paths: Sequence[str], landmarks: np.ndarray, image_size: int,
                 normalization: Normalization | None = None):
        self.paths = list(paths)
        self.landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        self.image_size = image_size
        self.transform = eval_transform(image_size, normalization)  # resize is a no-op after the warp

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_rgb(self.paths[index])
        if image is None:
            return None, index
        aligned = warp_to_template(image, self.landmarks[index], self.image_size)
        return self.transform(image=aligned)["image"], index


@torch.no_grad()
def flip_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Raw ``model(images) + model(mirrored images)`` (float32), one forward pass for both."""
    model.eval()
    both = model(torch.cat([images, torch.flip(images, dims=[3])])).float()
    return both[: len(images)] + both[len(images):]


def _compact(path: str, keep: np.ndarray, chunk: int = 65_536) -> None:
    """Rewrite the ``.npy`` at ``path`` keeping only the rows where ``keep`` is True."""
    source = np.load(path, mmap_mode="r")
    tmp = path + ".compact.npy"
    dest = open_memmap(tmp, mode="w+", dtype=source.dtype, shape=(int(keep.sum()), source.shape[1]))
    written = 0
    for start in range(0, len(source), chunk):
        rows = np.asarray(source[start:start + chunk])[keep[start:start + chunk]]
        dest[written:written + len(rows)] = rows
        written += len(rows)
    dest.flush()
    del dest, source
    os.replace(tmp, path)


def embed_crops(model: nn.Module, paths: Sequence[str], landmarks: np.ndarray, image_size: int,
                out_path: str, runtime: Runtime | torch.device | str, batch_size: int = 128,
                num_workers: int = 0, skip_undecodable: bool = False,
                progress: bool | None = None) -> np.ndarray:
    """Write the flip-summed raw feature of each crop, in the order of ``paths``, to ``out_path``
    (float32 ``.npy``), with a progress bar (``progress``; default: when stderr is a
    terminal); return the boolean mask of the crops embedded (all, unless
    ``skip_undecodable`` dropped undecodable files, whose rows are then left out of the file).
    The crops are embedded on ``runtime`` (a :class:`~faceignite.runtime.Runtime`, or a device
    for fp32), under its evaluation autocast."""
    runtime = Runtime.of(runtime)
    device = runtime.device
    model = model.to(device).eval()
    dim = int(getattr(model, "embedding_dim", 0)) or None
    loader = DataLoader(AlignedCrops(paths, landmarks, image_size, of_model(model)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate_with_index,
                        pin_memory=device.type == "cuda")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    part = out_path + ".part.npy"
    done = np.zeros(len(paths), dtype=bool)
    try:
        _stream_features(model, loader, paths, part, dim, runtime, done, skip_undecodable,
                         progress)
        if not done.all():
            _compact(part, done)
    except BaseException:  # no half-written file left behind (error, Ctrl-C)
        if os.path.exists(part):
            os.remove(part)
        raise
    os.replace(part, out_path)
    return done


def _stream_features(model: nn.Module, loader: DataLoader, paths: Sequence[str], part: str,
                     dim: int | None, runtime: Runtime, done: np.ndarray,
                     skip_undecodable: bool, progress: bool | None) -> None:
    """Embed the loader's batches into the ``.npy`` at ``part`` (created at the first batch),
    marking the rows written in ``done``."""
    from tqdm.auto import tqdm

    features = None
    with tqdm(total=len(paths), unit="img", desc="IJB crops",
              disable=not progress_enabled(progress)) as bar:
        for images, index, missing in loader:
            if len(missing) and not skip_undecodable:
                raise FaceIgniteError(f"cannot decode IJB crop {paths[missing[0]]} "
                                      f"(--skip_missing skips such crops)")
            for i in missing:
                logger.warning("skipping undecodable IJB crop: %s", paths[i])
            if len(index):
                with runtime.eval_autocast():
                    batch = flip_features(model, runtime.prepare(images)).cpu().numpy()
                if features is None:
                    features = open_memmap(part, mode="w+", dtype=np.float32,
                                           shape=(len(paths), dim or batch.shape[1]))
                features[index.numpy()] = batch
                done[index.numpy()] = True
            bar.update(len(index) + len(missing))
    if features is None:
        raise FaceIgniteError(f"none of the {len(paths)} IJB crops could be decoded, e.g. "
                              f"{paths[0]}")
    features.flush()


def _collate_with_index(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(images, their indices, indices of the crops that did not decode)``."""
    good = [(image, i) for image, i in batch if image is not None]
    missing = [i for image, i in batch if image is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), missing
    return (torch.stack([image for image, _ in good]),
            torch.tensor([i for _, i in good], dtype=torch.long), missing)
