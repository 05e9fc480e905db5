"""A RecordIO training set (``train.rec`` + ``train.idx`` + optional ``property``) as an image
index: the same identities / labels / samples the identity-folder index gives, so the split, the
samplers, resume and DDP work unchanged.

Two layouts are read:

* **insightface** (MS1MV2/3, Glint360K, CASIA-WebFace, this project's ``pack``): record 0's
  header has ``flag > 0`` and label ``[first identity record, end)``; images are keys
  ``1 … label[0] - 1``; identity records (keys ``label[0] … label[1] - 1``) hold the
  ``[start, end)`` key range of one identity's images.
* **im2rec**: no header record; every ``.idx`` key is an image, its label in its own header
  (record 0 too: a record 0 that holds an image is never taken for the header).

An image's class is its header label (the first value of a multi-value label, as insightface
reads it); classes are the distinct labels in increasing order, so labels ``0 … K-1`` keep their
numbers.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from faceignite.data.decode import decode_rgb
from faceignite.data.index import ImageIndex
from faceignite.data.recordio import EXACT_FLOAT_LIMIT, IndexedRecordReader
from faceignite.errors import FaceIgniteError

logger = logging.getLogger(__name__)
RECORD_INDEX_VERSION = 1
MAX_PROPERTY_SIZE = 4096  # pixels: a property file stating more is damaged


def record_files(dataroot: str) -> tuple[str, str, str | None] | None:
    """``(rec, idx, property or None)`` when ``dataroot`` is a ``.rec`` file or a folder holding
    ``train.rec``; ``None`` for anything else (an identity-folder root)."""
    path = os.path.abspath(os.path.expanduser(dataroot))
    if os.path.isdir(path):
        rec = os.path.join(path, "train.rec")
        if not os.path.isfile(rec):
            if os.path.isfile(os.path.join(path, "train.idx")):
                raise FaceIgniteError(f"--dataroot {path} holds train.idx but no train.rec (the "
                                      "records it indexes): copy train.rec beside it")
            return None
    elif path.lower().endswith(".idx") and os.path.isfile(path):
        raise FaceIgniteError(f"--dataroot {path} is a RecordIO index: give its folder or the "
                              f".rec file ({os.path.splitext(path)[0]}.rec)")
    elif path.lower().endswith(".rec"):
        rec = path
        if not os.path.isfile(rec):
            raise FaceIgniteError(f"--dataroot RecordIO file not found: {rec}")
    else:
        return None
    idx = os.path.splitext(rec)[0] + ".idx"
    if not os.path.isfile(idx):
        raise FaceIgniteError(f"--dataroot {rec} has no index beside it: {idx} is missing "
                              "(a .rec needs its .idx for random access)")
    prop = os.path.join(os.path.dirname(rec), "property")
    return rec, idx, prop if os.path.isfile(prop) else None


def read_property(path: str) -> tuple[int, int, int]:
    """``num_classes, height, width`` from an insightface ``property`` file."""
    try:
        with open(path, encoding="ascii") as f:
            values = [int(v) for v in f.read().strip().split(",")]
        if len(values) != 3:
            raise ValueError(values)
    except (OSError, ValueError, UnicodeDecodeError):
        raise FaceIgniteError(f"{path}: expected one line 'num_classes,height,width'") from None
    classes, height, width = values
    if classes < 1 or not (1 <= height <= MAX_PROPERTY_SIZE and 1 <= width <= MAX_PROPERTY_SIZE):
        raise FaceIgniteError(f"{path}: 'num_classes,height,width' = {classes},{height},{width}: "
                              f"expected at least one class and sizes of 1-{MAX_PROPERTY_SIZE} "
                              "pixels (insightface's sets say 112,112)")
    return classes, height, width


class RecordImageReader:
    """``reader(key)`` → the RGB image of record ``key`` (``None`` when damaged or undecodable,
    with a one-line warning naming file and key).  One file handle per process, opened on first
    use, so each DataLoader worker reads on its own."""

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.records = IndexedRecordReader(rec_path, idx_path)

    def describe(self, key: int) -> str:
        return f"{self.records.rec_path} key {key}"

    def __call__(self, key: int) -> np.ndarray | None:
        try:
            _, data = self.records.header(int(key))
        except FaceIgniteError as exc:
            logger.warning("%s", exc)
            return None
        except OSError as exc:  # a record that fails to read mid-epoch: skipped and counted
            logger.warning("%s: cannot read (%s)", self.describe(key), exc.strerror or exc)
            return None
        return decode_rgb(data)


@dataclass
class RecordIndex(ImageIndex):
    """An :class:`ImageIndex` over a ``.rec``: ``root`` is the ``.rec`` path, class names are the
    labels (``"0"``, ``"1"``, …), "file names" are record keys (as strings, for the digest)."""

    idx_path: str = ""

    def samples(self) -> list[tuple[int, int]]:  # type: ignore[override]
        """``(record key, class index)`` for every image, in class then key order."""
        return [(int(k), label) for label, keys in enumerate(self.files) for k in keys]

    def image_reader(self) -> RecordImageReader:
        return RecordImageReader(self.root, self.idx_path)


def _label_of(reader: IndexedRecordReader, key: int) -> float:
    label = reader.header_only(key).first_label
    if not math.isfinite(label) or label < 0:
        raise FaceIgniteError(f"{reader.rec_path} key {key}: label {label}: an identity label is "
                              "a non-negative number")
    return label


def _check_exact(path: str, what: str, value: float) -> None:
    if value >= EXACT_FLOAT_LIMIT:
        raise FaceIgniteError(
            f"{path}: {what} {value:.0f} is at or above 2^24 = {EXACT_FLOAT_LIMIT:,}: float32 "
            "labels are exact only below it, so identities/keys may have merged; this file "
            "cannot be read reliably")


def scan_record_file(rec: str, idx: str, prop: str | None = None) -> RecordIndex:
    """Read the layout of a ``.rec`` (see the module docstring) into a :class:`RecordIndex`."""
    reader = IndexedRecordReader(rec, idx)
    reader.check_end()
    keys = reader.keys
    first = int(keys[0])
    header0, image0 = reader.header(first) if first == 0 else (None, b"")
    by_label: dict[float, list[int]] = defaultdict(list)
    if header0 is not None and header0.flag > 0 and not image0:  # insightface layout
        label = header0.label
        if len(label) < 2:
            raise FaceIgniteError(f"{rec} key 0: header record with {len(label)} label value(s), "
                                  "expected [first identity record, end]")
        if not all(math.isfinite(v) for v in label[:2]):
            raise FaceIgniteError(f"{rec} key 0: header range {list(label[:2])} is not a pair of "
                                  "numbers")
        start, end = int(label[0]), int(label[1])
        if start < 1 or end < start:
            raise FaceIgniteError(f"{rec} key 0: header range [{start}, {end}) is out of order: "
                                  "expected [first identity record, end] with 1 <= first <= end")
        _check_exact(rec, "record 0's key range end", max(start, end))
        image_keys = keys[(keys >= 1) & (keys < start)]
        identity_keys = keys[(keys >= start) & (keys < end)]
        if len(identity_keys):
            ranges: list[tuple[int, int, int]] = []
            for ident in identity_keys:
                h, _ = reader.header(int(ident))
                if h.flag < 2:
                    raise FaceIgniteError(f"{rec} key {int(ident)}: identity record without a "
                                          "[start, end) key range")
                if not all(math.isfinite(v) for v in h.label[:2]) or h.label[1] <= h.label[0]:
                    raise FaceIgniteError(f"{rec} key {int(ident)}: identity range "
                                          f"{list(h.label[:2])} is empty or out of order")
                ranges.append((int(h.label[0]), int(h.label[1]), int(ident)))
            ranges.sort()
            for (_, a_end, a), (b_start, _, b) in zip(ranges, ranges[1:]):
                if b_start < a_end:
                    raise FaceIgniteError(f"{rec}: the identity ranges of keys {a} and {b} "
                                          "overlap (an image would belong to two identities)")
            for first, stop, _ in ranges:
                lo, hi = image_keys.searchsorted([first, stop])
                members = image_keys[lo:hi]  # keys in [start, end): image_keys is sorted
                if len(members):
                    by_label[_label_of(reader, int(members[0]))].extend(int(k) for k in members)
            covered = sum(len(v) for v in by_label.values())
            if covered != len(image_keys):
                logger.warning("%s: identity records cover %d of the %d image keys 1…%d; the "
                               "others are not used", rec, covered, len(image_keys), start - 1)
        else:  # no identity records: every image's own label
            for k in image_keys:
                by_label[_label_of(reader, int(k))].append(int(k))
        layout = "insightface"
    else:  # im2rec: every key an image
        for k in keys:
            by_label[_label_of(reader, int(k))].append(int(k))
        layout = "im2rec"
    if not by_label:
        raise FaceIgniteError(f"{rec}: no image records (record 0 names none)")
    labels = sorted(by_label)
    _check_exact(rec, "label", labels[-1])
    if prop:
        declared = read_property(prop)[0]
        if declared != len(labels):
            logger.warning("%s declares %d classes, %s holds images of %d labels", prop,
                           declared, rec, len(labels))
    classes = [f"{v:.0f}" if float(v).is_integer() else repr(v) for v in labels]
    files = [[str(k) for k in sorted(by_label[v])] for v in labels]
    logger.info("RecordIO %s (%s layout): %d images of %d identities", rec, layout,
                sum(len(f) for f in files), len(classes))
    return RecordIndex(os.path.abspath(rec), classes, files, os.path.abspath(idx))


def _fingerprint(rec: str, idx: str) -> str:
    a, b = os.stat(rec), os.stat(idx)
    return f"{a.st_size}:{a.st_mtime_ns}:{b.st_size}:{b.st_mtime_ns}"


def load_or_build_record_index(dataroot: str, cache_path: str | None = None) -> RecordIndex:
    """The :class:`RecordIndex` of a ``.rec`` file or ``train.rec`` folder, cached as JSON in
    ``cache_path`` (rebuilt when the ``.rec`` or ``.idx`` changes size or time)."""
    found = record_files(dataroot)
    if found is None:
        raise FaceIgniteError(f"--dataroot {dataroot}: not a .rec file nor a folder holding "
                              "train.rec")
    rec, idx, prop = found
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cached = json.load(f)
            if (cached.get("version") == RECORD_INDEX_VERSION and cached.get("root") == rec
                    and cached.get("fingerprint") == _fingerprint(rec, idx)):
                return RecordIndex(rec, cached["classes"], cached["files"], idx)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("RecordIO index cache %s unreadable (%s): rescanning", cache_path, exc)
    index = scan_record_file(rec, idx, prop)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        tmp = f"{cache_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": RECORD_INDEX_VERSION, "root": rec,
                       "fingerprint": _fingerprint(rec, idx), "classes": index.classes,
                       "files": index.files}, f)
        os.replace(tmp, cache_path)
    return index

