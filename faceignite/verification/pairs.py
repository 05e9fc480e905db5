"""LFW-format pairs files: parse, assign folds, resolve images (or embedding rows) of each pair.

The format (LFW View 2 ``pairs.txt``): an optional header ``folds<TAB>pairs_per_class`` (``10 300``)
or ``pairs_per_class`` (``pairsDevTest.txt``), then one pair per line: ``name i j`` for two
images of one person, ``name1 i name2 j`` for two people.  Image ``i`` of ``name`` is
``name/name_000i.<jpg|jpeg|png>``; its *key* is ``name/name_000i`` (no extension).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from faceignite.data.index import IMAGE_EXTENSIONS as INDEX_EXTENSIONS
from faceignite.errors import FaceIgniteError

logger = logging.getLogger("faceignite")

PAIRS_FILE_NAMES = ("pairs.txt", "lfw_pairs.txt")
IMAGE_EXTENSIONS = tuple(ext.lstrip(".") for ext in INDEX_EXTENSIONS)  # "jpg", ...
NUM_FOLDS = 10
_SHOWN = 3  # missing paths quoted in an error message


@dataclass(frozen=True)
class Pairs:
    """Pairs of a pairs file, over a de-duplicated list of image keys.

    ``left[p]``/``right[p]`` index ``keys``; ``issame[p]`` is the label; ``folds[p]`` the
    cross-validation fold (0 … 9); ``lines[p]`` the line number in ``path``.
    """

    path: str
    keys: tuple[str, ...]
    left: np.ndarray
    right: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    @property
    def num_folds(self) -> int:
        return len(np.unique(self.folds))

    def subset(self, keep: np.ndarray) -> "Pairs":
        """The pairs where ``keep`` is true, with ``keys`` reduced to the images they use."""
        left, right = self.left[keep], self.right[keep]
        used = np.unique(np.concatenate([left, right]))
        remap = np.full(len(self.keys), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return Pairs(self.path, tuple(self.keys[i] for i in used), remap[left], remap[right],
                     self.issame[keep], self.folds[keep], self.lines[keep])


def image_key(name: str, number: int) -> str:
    """``Aaron_Peirsol``, 3 → ``Aaron_Peirsol/Aaron_Peirsol_0003``."""
    return f"{name}/{name}_{number:04d}"


def find_pairs_file(lfw_dir: str | None, pairs_file: str | None = None) -> str:
    """``pairs_file`` when given, else ``pairs.txt`` or ``lfw_pairs.txt`` inside ``lfw_dir``."""
    if pairs_file:
        if not os.path.isfile(pairs_file):
            raise FaceIgniteError(f"--lfw_pairs file not found: {pairs_file}")
        return pairs_file
    if not lfw_dir or not os.path.isdir(lfw_dir):
        raise FaceIgniteError(f"--lfw folder not found: {lfw_dir} (give the folder holding the "
                              "person folders, or --lfw_pairs FILE)")
    for name in PAIRS_FILE_NAMES:
        path = os.path.join(lfw_dir, name)
        if os.path.isfile(path):
            return path
    raise FaceIgniteError(f"no pairs file in {lfw_dir}: put {' or '.join(PAIRS_FILE_NAMES)} there "
                          "or pass --lfw_pairs FILE")


def _parse_index(token: str) -> int:
    if not (token.isascii() and token.isdigit()) or int(token) < 1:
        raise ValueError(token)
    return int(token)


def _parse_name(token: str) -> str:
    if "/" in token or "\\" in token or token in (".", ".."):
        raise ValueError(token)
    return token


def _is_header(tokens: list[str]) -> bool:
    return 1 <= len(tokens) <= 2 and all(t.isdigit() for t in tokens)


def _header_folds(path: str, header: list[int], line: int, count: int) -> np.ndarray | None:
    """Folds by position from ``folds per_class``; ``None`` when the header names one set only."""
    sets, per_class = (header[0], header[1]) if len(header) == 2 else (1, header[0])
    if sets * per_class * 2 != count:
        raise FaceIgniteError(
            f"{path}:{line}: header says {sets} set(s) of {per_class} same + {per_class} different "
            f"pairs ({sets * per_class * 2} lines) but the file has {count} pair lines")
    return np.arange(count) // (2 * per_class) if sets > 1 else None


def _stratified_folds(path: str, issame: np.ndarray) -> np.ndarray:
    """10 folds keeping file order within each class: on a file laid out as LFW's, LFW's folds.

    A file with fewer than 10 pairs of a kind gets as many folds as it has (at least 2).
    """
    smaller = int(min(issame.sum(), (~issame).sum()))
    if smaller < 2:
        raise FaceIgniteError(f"{path}: cross-validation needs at least 2 same-person and 2 "
                              f"different-person pairs; the file has {int(issame.sum())} and "
                              f"{int((~issame).sum())}")
    splits = min(NUM_FOLDS, smaller)
    if splits < NUM_FOLDS:
        logger.warning("%s: only %d pairs of a kind, so %d folds instead of %d", path, smaller,
                       splits, NUM_FOLDS)
    folds = np.empty(len(issame), dtype=np.int64)
    from sklearn.model_selection import StratifiedKFold  # here, not at import: ~1 CPU-s

    for k, (_, test) in enumerate(StratifiedKFold(splits).split(issame, issame)):
        folds[test] = k
    return folds


def read_pairs(path: str) -> Pairs:
    """Parse a pairs file; a malformed line raises :class:`FaceIgniteError` naming file and line.

    Folds come from the header (``10 300``: consecutive blocks of 600 pairs); without one, the
    pairs are split into 10 folds in file order per class (the same folds for LFW's own layout).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is accepted
            text = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceIgniteError(f"cannot read pairs file {path}: {exc}") from exc
    keys: dict[str, int] = {}
    left, right, issame, lines = [], [], [], []
    header, header_line = None, 0
    for number, raw in enumerate(text, start=1):
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if header is None and not lines and _is_header(tokens):
            header, header_line = [int(t) for t in tokens], number
            continue
        try:
            if len(tokens) == 3:
                name = _parse_name(tokens[0])
                a, b = image_key(name, _parse_index(tokens[1])), image_key(name, _parse_index(tokens[2]))
            elif len(tokens) == 4:
                a = image_key(_parse_name(tokens[0]), _parse_index(tokens[1]))
                b = image_key(_parse_name(tokens[2]), _parse_index(tokens[3]))
            else:
                raise ValueError(raw)
        except ValueError:
            raise FaceIgniteError(
                f"{path}:{number}: malformed pair line {raw.strip()!r}: expected 'name i j' (same "
                "person) or 'name1 i name2 j' (different people), i and j image numbers from 1"
            ) from None
        left.append(keys.setdefault(a, len(keys)))
        right.append(keys.setdefault(b, len(keys)))
        issame.append(len(tokens) == 3)
        lines.append(number)
    if not lines:
        raise FaceIgniteError(f"pairs file {path} holds no pairs")
    same = np.array(issame, dtype=bool)
    folds = _header_folds(path, header, header_line, len(lines)) if header else None
    if folds is None:
        folds = _stratified_folds(path, same)
    return Pairs(path, tuple(keys), np.array(left, dtype=np.int64), np.array(right, dtype=np.int64),
                 same, folds, np.array(lines, dtype=np.int64))


def keep_available(pairs: Pairs, available: Collection[str], skip_missing: bool, what: str,
                   show: Mapping[str, str] | None = None) -> Pairs:
    """Check every key of ``pairs`` is in ``available``; else fail, or drop those pairs and log.

    ``what`` ends the message ("under /data/lfw"); ``show`` maps a key to the path quoted.
    """
    missing = [k for k in pairs.keys if k not in available]
    if not missing:
        return pairs
    quoted = ", ".join((show or {}).get(k, k) for k in missing[:_SHOWN])
    more = ", …" if len(missing) > _SHOWN else ""
    if not skip_missing:
        raise FaceIgniteError(
            f"{len(missing)} of {len(pairs.keys)} images named in {pairs.path} are missing {what}: "
            f"{quoted}{more}; fix --lfw/--lfw_pairs or pass --lfw_skip_missing to evaluate the rest")
    lost = set(missing)
    keep = np.array([pairs.keys[a] not in lost and pairs.keys[b] not in lost
                     for a, b in zip(pairs.left, pairs.right)], dtype=bool)
    if not keep.any():
        raise FaceIgniteError(f"every pair of {pairs.path} names a missing image {what}: {quoted}{more}")
    logger.warning("skipped %d of %d pairs of %s: %d of %d images missing %s: %s%s",
                   int((~keep).sum()), len(pairs), pairs.path, len(missing), len(pairs.keys), what,
                   quoted, more)
    return pairs.subset(keep)


def _find_image(root: str, key: str, listings: dict[str, dict[str, str]]) -> str | None:
    person, stem = key.split("/")
    files = listings.get(person)
    if files is None:
        try:
            files = {f.lower(): f for f in os.listdir(os.path.join(root, person))}
        except OSError:
            files = {}
        listings[person] = files
    for ext in IMAGE_EXTENSIONS:
        found = files.get(f"{stem}.{ext}".lower())
        if found is not None:
            return os.path.join(root, person, found)
    return None


def resolve_images(pairs: Pairs, root: str, skip_missing: bool = False) -> tuple[Pairs, list[str]]:
    """Image files of ``pairs.keys`` under ``root`` (jpg, jpeg or png), aligned with the keys
    of the returned (possibly reduced, with ``skip_missing``) pairs."""
    if not os.path.isdir(root):
        raise FaceIgniteError(f"--lfw folder not found: {root}")
    listings: dict[str, dict[str, str]] = {}
    found = {k: _find_image(root, k, listings) for k in pairs.keys}
    show = {k: os.path.join(root, k) + ".{jpg,jpeg,png}" for k, p in found.items() if p is None}
    pairs = keep_available(pairs, {k for k, p in found.items() if p}, skip_missing,
                           f"under {root}", show)
    return pairs, [found[k] for k in pairs.keys]  # type: ignore[misc]


def match_names(pairs: Pairs, names: Sequence[str], skip_missing: bool = False,
                source: str = "the names file") -> tuple[Pairs, np.ndarray]:
    """Rows of ``names`` (``Name/Name_000i``, extension optional) for ``pairs.keys``."""
    rows: dict[str, int] = {}
    for row, name in enumerate(names):
        stem, ext = os.path.splitext(name.strip())
        key = stem if ext.lower().lstrip(".") in IMAGE_EXTENSIONS else name.strip()
        if rows.setdefault(key, row) != row:
            raise FaceIgniteError(f"{source}:{row + 1}: {key!r} already named on line {rows[key] + 1}")
    pairs = keep_available(pairs, rows, skip_missing, f"from {source}")
    return pairs, np.array([rows[k] for k in pairs.keys], dtype=np.int64)
