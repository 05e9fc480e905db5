"""The IJB-B/IJB-C meta files of the standard release (insightface's ``IJB_release`` layout).

``DIR/meta/<target>_face_tid_mid.txt``  one row per face: ``image template_id media_id``
``DIR/meta/<target>_template_pair_label.txt``  one row per pair: ``template_1 template_2 label``
``DIR/meta/<target>_name_5pts_score.txt``  ``image x1 y1 … x5 y5 detector_score`` (12 columns:
    left eye, right eye, nose, left and right mouth corner, in pixels of the loose crop)
``DIR/loose_crop/<image>``  the loose face crops

Fields are separated by white space; blank lines are ignored.  ``<target>`` is spelled in lower
case in the release (``ijbc_…``); the upper-case spelling is accepted too.  Every problem is a
:class:`~faceignite.errors.FaceIgniteError` naming the file and its line.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from faceignite.errors import FaceIgniteError

TARGETS = ("IJBC", "IJBB")
FACE_TID_MID = "{}_face_tid_mid.txt"
TEMPLATE_PAIRS = "{}_template_pair_label.txt"
LANDMARKS = "{}_name_5pts_score.txt"
CROPS = "loose_crop"


@dataclass
class MetaFiles:
    """Paths of one target's meta files and crop folder."""

    target: str
    face_tid_mid: str
    pairs: str
    landmarks: str
    crops: str


@dataclass
class TemplateMedia:
    """``face_tid_mid``: image name, template id and media id of each face row."""

    path: str
    names: list[str]
    templates: np.ndarray  # int64, one per row
    medias: np.ndarray  # int64, one per row
    lines: np.ndarray  # int64 line number (1-based) of each row


@dataclass
class TemplatePairs:
    """``template_pair_label``: the two template ids and the label (1 genuine, 0 impostor)."""

    path: str
    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Landmarks:
    """``name_5pts_score``: five landmarks (pixels of the loose crop) and detector score of
    each image."""

    path: str
    names: list[str]
    points: np.ndarray  # float32 (N, 5, 2)
    scores: np.ndarray  # float32 (N,)
    row: dict[str, int] = field(default_factory=dict)  # image name → row


def meta_files(ijb_dir: str, target: str) -> MetaFiles:
    """The meta files of ``target`` (IJBC or IJBB) under ``ijb_dir``; one error naming the
    first one missing."""
    target = target.upper()
    if target not in TARGETS:
        raise FaceIgniteError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if not os.path.isdir(ijb_dir):
        raise FaceIgniteError(f"--ijb folder not found: {ijb_dir}")
    meta = os.path.join(ijb_dir, "meta")

    def find(pattern: str) -> str:
        for spelling in (target.lower(), target):
            path = os.path.join(meta, pattern.format(spelling))
            if os.path.isfile(path):
                return path
        expected = os.path.join(meta, pattern.format(target.lower()))
        raise FaceIgniteError(f"IJB meta file not found: {expected} "
                              f"(--ijb must hold meta/ and {CROPS}/ of the {target} release)")

    return MetaFiles(target, find(FACE_TID_MID), find(TEMPLATE_PAIRS), find(LANDMARKS),
                     os.path.join(ijb_dir, CROPS))


def _lines(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-blank line of ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                fields = line.split()
                if fields:
                    yield number, fields
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceIgniteError(f"cannot read {path}: {exc}") from exc


def _check_columns(path: str, number: int, fields: Sequence[str], columns: Sequence[str]) -> None:
    if len(fields) != len(columns):
        raise FaceIgniteError(f"{path} line {number}: expected {len(columns)} columns "
                              f"({' '.join(columns)}), got {len(fields)}")


def _number(path: str, number: int, value: str, column: str, kind: Callable) -> int | float:
    try:
        parsed = kind(value)
    except ValueError:
        raise FaceIgniteError(f"{path} line {number}: {column} is not "
                              f"{'an integer' if kind is int else 'a number'}: {value!r}") from None
    if kind is float and not math.isfinite(parsed):
        raise FaceIgniteError(f"{path} line {number}: {column} is not a finite number: {value!r}")
    return parsed


def read_template_media(path: str) -> TemplateMedia:
    """Read ``<target>_face_tid_mid.txt``."""
    columns = ("image", "template_id", "media_id")
    names, templates, medias, lines = [], [], [], []
    for number, fields in _lines(path):
        _check_columns(path, number, fields, columns)
        names.append(fields[0])
        templates.append(_number(path, number, fields[1], columns[1], int))
        medias.append(_number(path, number, fields[2], columns[2], int))
        lines.append(number)
    if not names:
        raise FaceIgniteError(f"{path} holds no face rows")
    return TemplateMedia(path, names, np.array(templates, dtype=np.int64),
                         np.array(medias, dtype=np.int64), np.array(lines, dtype=np.int64))


def _scan_pairs(path: str) -> np.ndarray:
    """The pairs file parsed line by line (the slow path, which names a bad line)."""
    columns = ("template_1", "template_2", "label")
    rows = []
    for number, fields in _lines(path):
        _check_columns(path, number, fields, columns)
        rows.append([_number(path, number, v, c, int) for v, c in zip(fields, columns)])
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _line_of_row(path: str, row: int) -> int:
    """The line number of the ``row``-th (0-based) non-blank line of ``path``."""
    for i, (number, _) in enumerate(_lines(path)):
        if i == row:
            return number
    raise AssertionError(f"{path} has no row {row}")


def read_template_pairs(path: str, known_templates: np.ndarray | None = None) -> TemplatePairs:
    """Read ``<target>_template_pair_label.txt`` (IJB-C: 15.7 M rows, parsed by NumPy; a bad
    file is scanned again line by line to name the line).  With ``known_templates``, a template
    id that is not among them (no image in ``face_tid_mid``) is an error naming its line."""
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
        if table.shape[1] != 3:
            raise ValueError("columns")
    except ValueError:
        table = _scan_pairs(path)  # raises, naming the line
    except OSError as exc:
        raise FaceIgniteError(f"cannot read {path}: {exc}") from exc
    if not len(table):
        raise FaceIgniteError(f"{path} holds no pairs")
    bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
    if len(bad):
        raise FaceIgniteError(f"{path} line {_line_of_row(path, int(bad[0]))}: label must be 1 "
                              f"(same identity) or 0, got {table[bad[0], 2]}")
    if known_templates is not None:
        known = np.unique(known_templates)
        for column in (0, 1):
            unknown = np.flatnonzero(~np.isin(table[:, column], known))
            if len(unknown):
                row = int(unknown[0])
                raise FaceIgniteError(f"{path} line {_line_of_row(path, row)}: template "
                                      f"{table[row, column]} has no image in the face_tid_mid file")
    return TemplatePairs(path, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())


def read_landmarks(path: str) -> Landmarks:
    """Read ``<target>_name_5pts_score.txt``; an image listed twice is an error."""
    columns = ("image",) + tuple(f"{p}_{a}" for p in ("left_eye", "right_eye", "nose",
                                                      "mouth_left", "mouth_right")
                                 for a in ("x", "y")) + ("detector_score",)
    names, values, row = [], [], {}
    for number, fields in _lines(path):
        _check_columns(path, number, fields, columns)
        name = fields[0]
        if name in row:
            raise FaceIgniteError(f"{path} line {number}: image {name} is listed twice")
        row[name] = len(names)
        names.append(name)
        values.append([_number(path, number, v, c, float) for v, c in zip(fields[1:], columns[1:])])
        if not 0.0 <= values[-1][-1] <= 1.0:
            raise FaceIgniteError(f"{path} line {number}: detector_score {fields[-1]} is not a "
                                  "probability in [0, 1]")
    if not names:
        raise FaceIgniteError(f"{path} holds no landmark rows")
    table = np.array(values, dtype=np.float32)
    return Landmarks(path, names, table[:, :10].reshape(-1, 5, 2), table[:, 10], row)
