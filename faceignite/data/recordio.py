"""MXNet/dmlc RecordIO files (``.rec`` + ``.idx``), read and written from the format's
specification, without MXNet.

Chunk layout (dmlc-core ``recordio.h``): uint32 little-endian magic ``0xced7230a``, uint32
``lrec`` (continuation flag ``cflag = lrec >> 29``, data length ``lrec & (2**29 - 1)`` bytes),
the data, zero padding to a multiple of 4 bytes.  A record whose data holds the magic number at a
4-byte aligned position is split there by the writer (cflag 1 = first part, 2 = middle, 3 = last;
0 = a whole record) and the reader puts the magic back between the parts.  ``.idx``: one
``key<TAB>byte offset`` line per record.

Record payload (MXNet ``recordio.pack``): the ``IRHeader`` struct ``'<IfQQ'`` (flag uint32,
label float32, id uint64, id2 uint64; 24 bytes); when ``flag > 0`` the label is the ``flag``
float32 values that follow the struct; the rest is the encoded image.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Sequence

import numpy as np

from faceignite.errors import FaceIgniteError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
EXACT_FLOAT_LIMIT = 1 << 24  # float32 holds every integer below 2**24 exactly


@dataclass(frozen=True)
class IRHeader:
    """MXNet's image record header: ``label`` is a float, or a tuple of floats when ``flag > 0``."""

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0

    @property
    def first_label(self) -> float:
        """The label, or its first value for a multi-value label (as insightface reads it)."""
        return self.label[0] if isinstance(self.label, tuple) else self.label


def pack_payload(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """``IRHeader`` + (float32 labels) + ``image`` bytes, as MXNet's ``recordio.pack`` writes."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(IR_FORMAT, 0, float(label), id, id2) + image
    values = np.asarray(label, dtype="<f4")
    return struct.pack(IR_FORMAT, values.size, 0.0, id, id2) + values.tobytes() + image


def unpack_payload(data: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record's payload into its :class:`IRHeader` and the image bytes."""
    if len(data) < IR_SIZE:
        raise FaceIgniteError(f"{where}: {len(data)} bytes, shorter than the {IR_SIZE}-byte "
                              "image record header")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, data)
    rest = data[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise FaceIgniteError(f"{where}: header announces {flag} float32 labels but only "
                                  f"{len(rest)} bytes follow")
        values = tuple(float(v) for v in np.frombuffer(rest, dtype="<f4", count=flag))
        return IRHeader(flag, values, id_, id2), rest[4 * flag:]
    return IRHeader(flag, float(label), id_, id2), rest


def _padded(length: int) -> int:
    return (length + 3) & ~3


def encode_record(data: bytes) -> bytes:
    """The chunks of one record, split where the magic occurs at a 4-byte aligned position."""
    if len(data) > LENGTH_MASK:
        raise FaceIgniteError(f"a RecordIO record holds at most {LENGTH_MASK} bytes, "
                              f"got {len(data)}")
    out, start = [], 0
    for i in range(0, len(data) - len(data) % 4, 4):
        if data[i:i + 4] == MAGIC_BYTES:
            out.append(struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start)))
            out.append(data[start:i])
            start = i + 4
    out.append(struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | (len(data) - start)))
    out.append(data[start:])
    out.append(b"\0" * (_padded(len(data)) - len(data)))
    return b"".join(out)


def read_record(f: BinaryIO, where: str) -> bytes:
    """Read one record at ``f``'s position, re-joining split parts (``where`` names it in errors)."""
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise FaceIgniteError(f"{where}: truncated (the file ends inside a record header)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise FaceIgniteError(f"{where}: bad magic number 0x{magic:08x} (expected "
                                  f"0x{MAGIC:08x}): not a RecordIO file, or a wrong .idx offset")
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        chunk = f.read(_padded(length))
        if len(chunk) < length:
            raise FaceIgniteError(f"{where}: truncated (record part of {length} bytes, "
                                  f"{len(chunk)} left in the file)")
        parts.append(chunk[:length])
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts)
        if cflag not in (1, 2):
            raise FaceIgniteError(f"{where}: invalid continuation flag {cflag}")


def _idx_error(path: str, text: str) -> FaceIgniteError:
    """The first malformed line of a ``.idx`` text, as an error naming file and line."""
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields and (len(fields) != 2 or not all(f.isdigit() for f in fields)):
            return FaceIgniteError(f"{path}:{number}: malformed index line {line.strip()[:60]!r}:"
                                   " expected 'key<TAB>offset'")
    return FaceIgniteError(f"{path}: malformed index")


def read_idx(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys (sorted) and byte offsets of a ``.idx`` file (``key<TAB>offset`` lines), as int64
    arrays: 16 bytes a record, where a dict would take ~100 (MS1MV2 has 5.8 M records)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceIgniteError(f"cannot read RecordIO index {path}: {exc}") from exc
    fields = text.split()
    if len(fields) % 2:
        raise _idx_error(path, text)
    try:
        table = np.array(fields, dtype=np.int64).reshape(-1, 2)
    except (ValueError, OverflowError):
        raise _idx_error(path, text) from None
    if not len(table):
        raise FaceIgniteError(f"RecordIO index {path} holds no records")
    table = table[np.argsort(table[:, 0], kind="stable")]
    keys, offsets = table[:, 0].copy(), table[:, 1].copy()
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        raise FaceIgniteError(f"{path}: key {keys[repeated[0]]} is listed twice")
    return keys, offsets


class IndexedRecordReader:
    """Random access to the records of a ``.rec`` by key, through its ``.idx``.

    Each record is read by a seek and a read (never the whole file).  The file handle is opened
    lazily and re-opened in a new process (a forked DataLoader worker gets its own): the object
    pickles without its handle, so it can travel to spawned workers too.
    """

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.rec_path = os.path.abspath(rec_path)
        self.idx_path = idx_path or os.path.splitext(self.rec_path)[0] + ".idx"
        if not os.path.isfile(self.rec_path):
            raise FaceIgniteError(f"RecordIO file not found: {self.rec_path}")
        if not os.path.isfile(self.idx_path):
            raise FaceIgniteError(f"RecordIO index not found: {self.idx_path} (the .idx beside "
                                  f"{self.rec_path})")
        self._keys, self._offsets = read_idx(self.idx_path)
        self.size = os.path.getsize(self.rec_path)
        self.check_offsets()
        self._file: BinaryIO | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: int) -> bool:
        i = int(self._keys.searchsorted(key))
        return i < len(self._keys) and int(self._keys[i]) == key

    @property
    def keys(self) -> np.ndarray:
        """Every key of the ``.idx``, sorted."""
        return self._keys

    def offset(self, key: int) -> int:
        i = int(self._keys.searchsorted(key))
        if i >= len(self._keys) or int(self._keys[i]) != key:
            raise FaceIgniteError(f"{self.rec_path} key {key}: no such key in {self.idx_path}")
        return int(self._offsets[i])

    def check_offsets(self) -> None:
        """Fail now, naming the first bad record and both files, when an offset of the
        ``.idx`` is negative or leaves no room for a record header in the ``.rec`` (a damaged or
        mismatched index): found when the index is read, never mid-epoch."""
        bad = np.flatnonzero((self._offsets < 0) | (self._offsets + 8 > self.size))
        if bad.size:
            i = int(bad[0])
            more = f" ({bad.size} records like it)" if bad.size > 1 else ""
            offset = int(self._offsets[i])
            where = "negative" if offset < 0 else f"past the end of the {self.size}-byte file"
            raise FaceIgniteError(
                f"{self.rec_path} key {int(self._keys[i])}: {os.path.basename(self.idx_path)} "
                f"gives offset {offset}, {where}{more} (a damaged .idx, or one of another .rec)")

    def check_end(self) -> None:
        """Fail now, naming the key, when the ``.idx`` points past the end of the ``.rec`` or the
        last record is cut short (a truncated download or copy)."""
        last = int(np.argmax(self._offsets))
        self.read(int(self._keys[last]))

    def _handle(self) -> BinaryIO:
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.rec_path, "rb")  # noqa: SIM115 (kept open: one per process)
            self._pid = os.getpid()
        return self._file

    def read(self, key: int) -> bytes:
        """The payload of record ``key``; :class:`FaceIgniteError` naming file and key on damage."""
        offset = self.offset(key)
        where = f"{self.rec_path} key {key}"
        if offset + 8 > self.size:
            raise FaceIgniteError(f"{where}: {os.path.basename(self.idx_path)} gives offset "
                                  f"{offset}, past the end of the {self.size}-byte file "
                                  "(truncated .rec or wrong .idx)")
        f = self._handle()
        f.seek(offset)
        return read_record(f, where)

    def header(self, key: int) -> tuple[IRHeader, bytes]:
        """Record ``key`` unpacked into ``(IRHeader, image bytes)``."""
        return unpack_payload(self.read(key), f"{self.rec_path} key {key}")

    def header_only(self, key: int) -> IRHeader:
        """The :class:`IRHeader` of record ``key``, reading its first bytes only (the whole
        record when it was split inside its header)."""
        offset = self.offset(key)
        if offset + 8 > self.size:
            return self.header(key)[0]  # raises, naming the key
        f = self._handle()
        f.seek(offset)
        head = f.read(8 + IR_SIZE + 64)
        magic, lrec = struct.unpack_from("<II", head) if len(head) >= 8 else (0, 0)
        length = lrec & LENGTH_MASK
        flag = struct.unpack_from("<I", head, 8)[0] if len(head) >= 12 else 1 << 30
        if (magic != MAGIC or lrec >> 29 != 0 or 4 * flag > 64
                or len(head) < 8 + min(length, IR_SIZE + 64)):
            return self.header(key)[0]  # split, damaged, short or many labels: read it all
        return unpack_payload(head[8:8 + min(length, IR_SIZE + 64)],
                              f"{self.rec_path} key {key}")[0]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None


class IndexedRecordWriter:
    """Append records to a ``.rec`` and their ``key<TAB>offset`` lines to its ``.idx``."""

    def __init__(self, rec_path: str, idx_path: str):
        self.rec_path, self.idx_path = rec_path, idx_path
        self._rec = open(rec_path, "wb")  # noqa: SIM115
        self._idx = open(idx_path, "w", encoding="ascii")  # noqa: SIM115

    def write(self, key: int, data: bytes) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(encode_record(data))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "IndexedRecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

