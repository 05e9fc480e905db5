"""insightface verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, …), read safely.

A ``.bin`` is a pickle of ``(images, issame)``: ``2 × P`` encoded images (JPEG/PNG) in pair
order, then one bool per pair.  Images come as Python 2 ``str`` (protocol-2 string opcodes, read
here as bytes), Python 3 ``bytes`` (protocol 2 writes them through ``_codecs.encode(…,
'latin1')``) or ``numpy.uint8`` arrays from ``cv2.imencode``.

Never ``pickle.load`` such a file: a pickle can call any importable function.  The
:class:`BinUnpickler` here ("Restricting Globals", Python's ``pickle`` documentation) resolves
only the few globals these files need, each wrapped to accept only harmless arguments, and
refuses anything else with one line naming the file and the global; nothing a refused file asks
for runs.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from faceignite.errors import FaceIgniteError

NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x / 2.x pickles
NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")


class _Refused(pickle.UnpicklingError):
    pass


def _numpy_function(name: str) -> Callable:
    """``numpy._core.multiarray.<name>`` (numpy 2), else ``numpy.core.multiarray.<name>``."""
    try:
        from numpy._core import multiarray, numeric  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return getattr(multiarray, name, None) or getattr(numeric, name)


def _plain_dtype(value: Any) -> np.dtype:
    dt = value if isinstance(value, np.dtype) else None
    if dt is None or dt.hasobject:
        raise _Refused(f"array of dtype {value!r} (only plain numeric dtypes are allowed)")
    return dt


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode(str, 'latin1')``, how protocol 2 stores Python 3 bytes; nothing else."""
    if rest or not isinstance(text, str) or str(encoding).lower() not in LATIN1:
        raise _Refused(f"_codecs.encode with encoding {encoding!r} (only latin1 strings)")
    return text.encode("latin1")


def _dtype(spec: Any, *args: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii")
    if not isinstance(spec, str) or len(spec) > 4 or spec[:1] in ("O", "V"):
        raise _Refused(f"numpy.dtype({spec!r}) (only plain numeric dtypes are allowed)")
    return _plain_dtype(np.dtype(spec, *args))


class _NDArrayName:
    """What ``numpy.ndarray`` resolves to: a name ``_reconstruct`` accepts, not a callable (so a
    pickle cannot allocate arrays of any shape it likes)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        raise _Refused("a direct call of numpy.ndarray (only through numpy's _reconstruct)")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's own pickles call ``_reconstruct(ndarray, (0,), b'b')``, then fill the empty
    array from its state (shape, dtype, raw bytes); nothing else is accepted."""
    if subtype is not _NDArrayName or shape != (0,) or typecode not in (b"b", "b"):
        raise _Refused(f"numpy _reconstruct({getattr(subtype, '__name__', subtype)!r}, "
                       f"{shape!r}, {typecode!r}) (only numpy's empty-array form)")
    return _numpy_function("_reconstruct")(np.ndarray, shape, typecode)


def _scalar(dtype: Any, *args: Any) -> Any:
    _plain_dtype(dtype)
    return _numpy_function("scalar")(dtype, *args)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    _plain_dtype(dtype)
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise _Refused("numpy _frombuffer of a non-bytes buffer")
    return _numpy_function("_frombuffer")(buf, dtype, shape, order)


ALLOWED: dict[tuple[str, str], Any] = {("_codecs", "encode"): _codecs_encode,
                                       ("numpy", "ndarray"): _NDArrayName,
                                       ("numpy", "dtype"): _dtype}
for _module in NUMPY_MODULES:
    ALLOWED[(_module, "_reconstruct")] = _reconstruct
    ALLOWED[(_module, "scalar")] = _scalar
for _module in NUMERIC_MODULES:
    ALLOWED[(_module, "_frombuffer")] = _frombuffer


class BinUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED` globals (each one argument-checked)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None


@dataclass
class BinSet:
    """The content of a ``.bin``: encoded image bytes (``2 × P``, pair order) and labels."""

    path: str
    images: list[bytes]
    issame: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)


def _as_bytes(path: str, i: int, item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    kind = type(item).__name__ + (f" of {item.dtype}" if isinstance(item, np.ndarray) else "")
    raise FaceIgniteError(f"{path}: image {i} is a {kind}, expected encoded image bytes or a "
                          "uint8 array")


def _is_label(value: Any) -> bool:
    """A boolean, or the integer 0 or 1 (never a string such as ``'False'``, which is truthy)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (int, np.integer)) and int(value) in (0, 1)


def issame_labels(path: str, issame: Any) -> np.ndarray:
    """``issame`` as a bool array; anything but booleans or 0/1 integers is one line naming the
    file and the first bad pair."""
    if isinstance(issame, np.ndarray):
        values = issame.reshape(-1).tolist() if issame.dtype != object else None
    elif isinstance(issame, (list, tuple)):
        values = list(issame)
    else:
        values = None
    if values is None:
        raise FaceIgniteError(f"{path}: issame is a {type(issame).__name__}, expected a list of "
                              "booleans (or 0/1)")
    for pair, value in enumerate(values):
        if not _is_label(value):
            raise FaceIgniteError(f"{path}: issame of pair {pair} is {value!r} "
                                  f"({type(value).__name__}): only booleans or 0/1 are labels")
    return np.asarray(values, dtype=bool).reshape(-1)


def load_bin(path: str) -> BinSet:
    """Read a verification ``.bin`` with :class:`BinUnpickler` (Python 2 strings as bytes).

    Raises :class:`FaceIgniteError` (one line naming the file) for a refused global, a damaged
    pickle, or content other than ``(images, issame)`` with ``len(images) == 2 * len(issame)``.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FaceIgniteError(f"cannot read verification set {path}: {exc}") from exc
    try:
        content = BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise FaceIgniteError(f"{path}: refused to unpickle {exc}: a verification .bin holds only "
                              "image bytes and labels (the file may be malicious)") from None
    except Exception as exc:  # noqa: BLE001 (any damage in a pickle stream)
        raise FaceIgniteError(f"{path}: not a readable verification .bin "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              ) from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise FaceIgniteError(f"{path}: expected a pickled (images, issame) pair, got a "
                              f"{type(content).__name__}")
    images, issame = content
    labels = issame_labels(path, issame)
    try:
        images = list(images)
    except TypeError:
        raise FaceIgniteError(f"{path}: images is a {type(images).__name__}, not a list") from None
    if len(images) != 2 * len(labels) or not len(labels):
        raise FaceIgniteError(f"{path}: {len(images)} images for {len(labels)} pairs "
                              f"(expected 2 images a pair)")
    return BinSet(os.path.abspath(path), [_as_bytes(path, i, x) for i, x in enumerate(images)],
                  labels)
