"""Verification targets: an insightface ``.bin`` file or an LFW-format folder, evaluated with the
same protocol (:mod:`faceignite.verification.metrics`) and the same embedding engine.

    target = load_target("agedb_30.bin")                 # or "lfw-mtcnn-160" (pairs.txt inside)
    result = create_target_evaluator(model, target, runtime, image_size=112, flip=True).run()
    print(target.name, result.summary()); save_roc_curve(result, f"roc_{target.name}.png")

Folds: an LFW folder's as :func:`~faceignite.verification.pairs.read_pairs` gives them; a ``.bin``'s are
10 consecutive blocks of pairs in file order (insightface's unshuffled ``KFold``), which for
``lfw.bin`` (written in ``pairs.txt`` order) are LFW's own folds.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from faceignite.data.dataset import FaceImageDataset, collate_skip_bad, read_rgb
from faceignite.data.decode import decode_rgb
from faceignite.data.normalization import Normalization, of_model
from faceignite.data.transforms import eval_transform
from faceignite.errors import FaceIgniteError
from faceignite.runtime import Runtime
from faceignite.verification.bin_set import load_bin
from faceignite.verification.evaluator import PairsEvaluator, PairVerification, create_embedding_engine
from faceignite.verification.pairs import (NUM_FOLDS, PAIRS_FILE_NAMES, Pairs, find_pairs_file,
                                  read_pairs, resolve_images)

logger = logging.getLogger("faceignite")


class BinImageReader:
    """``reader(i)`` → RGB image ``i`` of a ``.bin`` (decoded from its bytes on demand)."""

    def __init__(self, path: str, images: list[bytes]):
        self.path, self.images = path, images

    def describe(self, i: int) -> str:
        return f"{self.path} image {i}"

    def __call__(self, i: int) -> np.ndarray | None:
        return decode_rgb(self.images[i])


@dataclass
class VerificationTarget:
    """One pairs set: its ``name`` (file stem or folder name: the metric prefix), its pairs over
    unique image keys, and per key a ``source`` that ``read`` turns into an RGB image."""

    name: str
    path: str
    kind: str  # "bin" or "lfw"
    pairs: Pairs
    sources: list[Any]
    read: Callable[[Any], np.ndarray | None]
    skipped_pairs: int = 0

    @property
    def names(self) -> list[str]:
        """A printable name per image (file paths, or ``file.bin image i``)."""
        describe = getattr(self.read, "describe", str)
        return [describe(s) for s in self.sources]


def bin_pairs(path: str, issame: np.ndarray) -> Pairs:
    """Pairs ``(2p, 2p + 1)`` of a ``.bin``, in 10 consecutive folds (fewer if it is tiny)."""
    count = len(issame)
    splits = min(NUM_FOLDS, count)
    if splits < 2:
        raise FaceIgniteError(f"{path}: {count} pair(s): cross-validation needs at least 2")
    folds = np.empty(count, dtype=np.int64)
    from sklearn.model_selection import KFold  # here, not at import: ~1 CPU-s

    for k, (_, test) in enumerate(KFold(splits, shuffle=False).split(np.arange(count))):
        folds[test] = k
    left = np.arange(0, 2 * count, 2, dtype=np.int64)
    return Pairs(path, tuple(str(i) for i in range(2 * count)), left, left + 1,
                 np.asarray(issame, dtype=bool), folds, np.arange(1, count + 1, dtype=np.int64))


def target_name(path: str) -> str:
    """A target's name, the prefix of its metrics: the file stem of a ``.bin`` (``agedb_30``),
    else the folder name, each run of characters other than letters, digits and ``_`` made one
    ``_`` (``lfw-mtcnn-160`` → ``lfw_mtcnn_160``), so that ``<name>_accuracy`` is a plain word
    in checkpoint file names and tracker tags."""
    path = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    base = os.path.basename(path)
    if base.lower().endswith(".bin"):
        base = base[:-4]
    return re.sub(r"\W+", "_", base).strip("_") or "target"


def load_target(path: str, pairs_file: str | None = None,
                skip_missing: bool = False) -> VerificationTarget:
    """A ``.bin`` file or an LFW-format folder (``pairs.txt``/``lfw_pairs.txt`` inside, or
    ``pairs_file``) as a :class:`VerificationTarget` named by :func:`target_name`; errors name
    the path."""
    path = os.path.expanduser(path)
    if os.path.isfile(path) and path.lower().endswith(".bin"):
        data = load_bin(path)
        reader = BinImageReader(data.path, data.images)
        name = target_name(path)
        return VerificationTarget(name, data.path, "bin", bin_pairs(data.path, data.issame),
                                  list(range(len(data.images))), reader)
    if os.path.isdir(path) or pairs_file:
        pairs_path = find_pairs_file(path, pairs_file)
        pairs = read_pairs(pairs_path)
        total = len(pairs)
        root = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(pairs_path))
        pairs, files = resolve_images(pairs, root, skip_missing)
        name = target_name(root)
        return VerificationTarget(name, os.path.abspath(root), "lfw", pairs, files, read_rgb,
                                  total - len(pairs))
    raise FaceIgniteError(f"verification target {path}: not a .bin file nor an LFW-format "
                          "folder (one sub-folder per person and a pairs.txt)")


def load_targets(paths: Sequence[str]) -> list[VerificationTarget]:
    """:func:`load_target` of each path; two targets of one name are refused (metric names
    ``<name>_accuracy`` … must be distinct)."""
    targets = [load_target(p) for p in paths]
    seen: dict[str, str] = {}
    for t in targets:
        if t.name in seen:
            raise FaceIgniteError(f"verification targets {seen[t.name]} and {t.path} are both "
                                  f"named {t.name!r}: rename one")
        seen[t.name] = t.path
    return targets


RESERVED_NAMES = ("val", "train", "lr")  # prefixes of the held-out, training and LR metrics
BEST_BY_METRICS = ("accuracy", "auc")   # higher is better, and plain words in file names


@dataclass(frozen=True)
class TargetSpec:
    """A target named but not yet read: ``name`` (the metric prefix), its ``.bin`` or folder
    ``path``, and for a folder an optional ``pairs_file`` and ``skip_missing``."""

    name: str
    path: str | None
    pairs_file: str | None = None
    skip_missing: bool = False

    def load(self, check_images: bool = True) -> VerificationTarget:
        """Read it (:func:`load_target`) under this spec's name; ``check_images``: decode every
        image now (:func:`check_decodable`), so that a bad target fails before training."""
        path = self.path
        if path is None or not (os.path.isfile(path) and path.lower().endswith(".bin")):
            find_pairs_file(path, self.pairs_file)  # a folder: --lfw's messages when it is bad
        if path is None:  # --lfw_pairs alone: the images lie beside the pairs file
            path = os.path.dirname(os.path.abspath(self.pairs_file or "."))
        target = replace(load_target(path, self.pairs_file, self.skip_missing), name=self.name)
        return check_decodable(target, self.skip_missing) if check_images else target


def check_decodable(target: VerificationTarget, skip_missing: bool = False,
                    threads: int | None = None) -> VerificationTarget:
    """Decode every image of ``target`` (in ``threads`` threads: OpenCV releases the GIL).

    A verification set with a pair dropped is no longer its published protocol: an image that
    does not decode is one :class:`FaceIgniteError` line naming the target, the pair and the
    image, unless ``skip_missing`` (``--lfw_skip_missing``): then the pairs using such images
    are dropped, counted in ``skipped_pairs`` and logged."""
    from concurrent.futures import ThreadPoolExecutor

    def decodes(source: Any) -> bool:
        try:
            return target.read(source) is not None
        except Exception:  # noqa: BLE001 - any failure to read is "does not decode"
            return False

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        ok = np.fromiter(pool.map(decodes, target.sources), dtype=bool,
                         count=len(target.sources))
    if ok.all():
        return target
    pairs = target.pairs
    keep = ok[pairs.left] & ok[pairs.right]
    first = int(np.flatnonzero(~keep)[0])
    image = int(pairs.left[first] if not ok[pairs.left[first]] else pairs.right[first])
    pair = (f"pair {first + 1}" if target.kind == "bin"
            else f"pair on line {int(pairs.lines[first])} of {pairs.path}")
    bad = f"{int((~ok).sum())} image(s) do not decode, used by {int((~keep).sum())} pair(s)"
    if not skip_missing:
        raise FaceIgniteError(f"verification target {target.name} ({target.path}): "
                              f"{target.names[image]} of {pair} does not decode ({bad}); fix "
                              f"the file or pass --lfw_skip_missing to drop such pairs")
    if not keep.any():
        raise FaceIgniteError(f"verification target {target.name} ({target.path}): no pair "
                              f"left, {bad}")
    reduced = pairs.subset(keep)
    used = np.unique(np.concatenate([pairs.left[keep], pairs.right[keep]]))
    logger.warning("verification target %s: %d of %d pairs dropped before training (--lfw_skip"
                   "_missing): %s, e.g. %s", target.name, int((~keep).sum()), len(pairs), bad,
                   target.names[image])
    return replace(target, pairs=reduced, sources=[target.sources[i] for i in used],
                   skipped_pairs=target.skipped_pairs + int((~keep).sum()))


PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def split_named(value: str, option: str) -> tuple[str | None, str]:
    """``NAME=PATH`` → ``(NAME, PATH)``; anything else → ``(None, value)``.  ``=`` splits only
    when the part before it is a plain name (letters, digits, ``_``) and ``value`` as a whole
    is not an existing path (a folder may have ``=`` in its name)."""
    name, sep, path = value.partition("=")
    if not sep or os.path.exists(os.path.expanduser(value)) or not PLAIN_NAME.match(name):
        return None, value
    if not path:
        raise FaceIgniteError(f"{option} {value}: no path after {name}=")
    return name, path


def plan_targets(val_targets: Sequence[str] | None,
                 lfw: tuple[str | None, str | None] | None = None,
                 skip_missing: bool = False,
                 val_pairs: Sequence[str] | None = None) -> list[TargetSpec]:
    """The targets of ``--lfw`` (``lfw = (folder, pairs file)``, named ``lfw``) then of
    ``--val_targets`` (each ``PATH`` or ``NAME=PATH``), checked without reading them: each path
    exists and is a ``.bin`` file or a folder, and the names are distinct and not
    ``val``/``train``/``lr`` (those prefix other metrics).  ``val_pairs``: ``NAME=PAIRS_FILE``
    each, the pairs file of the folder target ``NAME`` when it is stored elsewhere.  Problems
    raise one line naming the option."""
    specs = [TargetSpec("lfw", lfw[0], lfw[1], skip_missing)] if lfw is not None else []
    where = {"lfw": "--lfw"} if lfw is not None else {}
    pairs_of: dict[str, str] = {}
    for value in val_pairs or ():
        name, pairs_path = split_named(value, "--val_pairs")
        if name is None:
            raise FaceIgniteError(f"--val_pairs {value}: give NAME=PAIRS_FILE, NAME a target "
                                  f"of --val_targets")
        if not os.path.isfile(os.path.expanduser(pairs_path)):
            raise FaceIgniteError(f"--val_pairs {value}: no such file {pairs_path}")
        pairs_of[name] = os.path.expanduser(pairs_path)
    for value in val_targets or ():
        given, path = split_named(value, "--val_targets")
        shown = value
        path = os.path.expanduser(path)
        name = given or target_name(path)
        pairs_file = pairs_of.get(name)
        if not os.path.exists(path):
            raise FaceIgniteError(f"--val_targets {shown}: no such file or folder")
        if not (os.path.isdir(path) or path.lower().endswith(".bin")):
            raise FaceIgniteError(f"--val_targets {shown}: not a .bin file nor an LFW-format "
                                  "folder")
        if pairs_file and not os.path.isdir(path):
            raise FaceIgniteError(f"--val_pairs {name}={pairs_file}: target {shown} is a .bin, "
                                  f"which holds its pairs; a pairs file is for a folder")
        if os.path.isdir(path) and not pairs_file and not any(
                os.path.isfile(os.path.join(path, n)) for n in PAIRS_FILE_NAMES):
            raise FaceIgniteError(f"--val_targets {shown}: a folder without "
                                  f"{' or '.join(PAIRS_FILE_NAMES)} (an LFW-format folder "
                                  f"holds one; or give it with --val_pairs {name}=PAIRS_FILE)")
        if name in RESERVED_NAMES:
            raise FaceIgniteError(f"--val_targets {shown} would be named {name!r}, which "
                                  f"prefixes other metrics ({name}_*): rename it")
        if name in where:
            raise FaceIgniteError(f"--val_targets {shown} and {where[name]} are both named "
                                  f"{name!r} (metrics {name}_accuracy ...): rename one")
        where[name] = shown
        specs.append(TargetSpec(name, path, pairs_file, skip_missing))
    unused = sorted(set(pairs_of) - set(where))
    if unused:
        raise FaceIgniteError(f"--val_pairs {unused[0]}={pairs_of[unused[0]]}: no target named "
                              f"{unused[0]!r} (targets: {', '.join(where) or 'none'}; name one "
                              f"with --val_targets {unused[0]}=FOLDER)")
    return specs


def best_metric(best_by: str | None, names: Sequence[str]) -> str | None:
    """The metric that picks the best checkpoint: ``best_by`` given as a target's name
    (``cfp_fp`` → ``cfp_fp_accuracy``) or as ``<name>_accuracy`` / ``<name>_auc``; by default
    the first target's accuracy (None without targets).  Anything else raises one line naming
    ``--best_by`` and the choices."""
    if best_by is None:
        return f"{names[0]}_accuracy" if names else None
    choices = {n: f"{n}_accuracy" for n in names}
    choices.update({f"{n}_{m}": f"{n}_{m}" for n in names for m in BEST_BY_METRICS})
    if best_by in choices:
        return choices[best_by]
    if not names:
        raise FaceIgniteError(f"--best_by {best_by}: there is no verification target to choose "
                              "from (give --lfw or --val_targets)")
    raise FaceIgniteError(f"--best_by {best_by}: not a validation target; choose one of "
                          f"{', '.join(names)} (or <name>_accuracy, <name>_auc)")


def target_loader(target: VerificationTarget, image_size: int, batch_size: int,
                  num_workers: int = 0, pin_memory: bool = False, num_replicas: int = 1,
                  rank: int = 0, normalization: Normalization | None = None) -> DataLoader:
    """Batches ``(images, image indices, skipped)`` of the target's images in order, resized and
    normalised as for training (``normalization``: the model's; ImageNet's when None); with ``num_replicas > 1`` this ``rank``'s share only."""
    samples = [(s, i) for i, s in enumerate(target.sources)][rank::num_replicas]
    dataset = FaceImageDataset(samples, eval_transform(image_size, normalization), read=target.read)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_skip_bad, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def create_target_evaluator(model: nn.Module | Callable, target: VerificationTarget,
                            runtime: Runtime | torch.device | str, image_size: int,
                            batch_size: int = 128, flip: bool = False, distance: str = "l2",
                            num_workers: int = 0,
                            skip_undecodable: bool = False) -> PairsEvaluator:
    """The embedding engine and protocol metric for ``target`` (as
    :func:`~faceignite.verification.evaluator.create_pairs_evaluator` builds them for a folder):
    ``.run()`` returns a :class:`~faceignite.verification.metrics.VerificationResult`.  Sharded over
    the processes of a distributed run, which must all run it together.  ``runtime``: a
    :class:`~faceignite.runtime.Runtime`, or a device for fp32."""
    runtime = Runtime.of(runtime)
    names = target.names
    engine = create_embedding_engine(model, runtime, flip)
    PairVerification(target.pairs, names, distance,
                     skip_undecodable=skip_undecodable).attach(engine, "verification")
    loader = target_loader(target, image_size, batch_size, num_workers,
                           runtime.device.type == "cuda", runtime.world_size, runtime.rank,
                           of_model(model))
    return PairsEvaluator(engine, loader, target.pairs, names, target.skipped_pairs,
                          name=target.name)
