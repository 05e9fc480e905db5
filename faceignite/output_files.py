"""Output files of the commands: check the path before the work, write atomically, and turn
every failure (a file where a folder should be, a read-only or virtual file system, a full
disk) into one :class:`~faceignite.errors.FaceIgniteError` line naming the option and path."""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Callable

from faceignite.errors import FaceIgniteError


def write_error(exc: OSError, path: str, option: str) -> str:
    """One line for a failed write of ``path`` (given as ``option``)."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device writing {path} ({option})"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {path} ({option})"
    if exc.errno == errno.EROFS:
        return f"cannot write {path} ({option}): read-only file system"
    return f"cannot write {path} ({option}): {exc.strerror or exc.__class__.__name__}"


def make_output_folder(path: str, option: str) -> None:
    """Make the output folder ``path`` (given as ``option``), or one line: a file in the way, a
    read-only or virtual file system."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FaceIgniteError(f"{option} {path}: a file is in the way at or above it (give a "
                              "folder)") from None
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, path, option)) from None


def prepare_output_file(path: str, option: str) -> str:
    """Make the folder of output file ``path`` and check a file can be created there, before any
    work is done; return the absolute path.

    Raises :class:`FaceIgniteError` naming ``option`` when ``path`` is a folder, its folder
    cannot be made (a file in the way, a virtual file system such as ``/proc``) or not
    written (read-only, no space left)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise FaceIgniteError(f"{option} {path} is a folder: give a file name")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FaceIgniteError(f"{option} {path}: cannot make its folder, a file is in the way "
                              f"at or above {folder}") from None
    except OSError as exc:
        raise FaceIgniteError(f"{option} {path}: cannot make its folder {folder}: "
                              f"{exc.strerror or exc}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, path, option)) from None
    return path


def write_atomic(path: str, write: Callable[[str], None], option: str) -> None:
    """Call ``write(temporary path)`` beside ``path``, then rename it to ``path``: a failed write
    (no space left, ...) leaves an earlier ``path`` as it was and no partial file behind.

    Raises :class:`FaceIgniteError` naming ``option`` and ``path`` on any ``OSError``."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}.part{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise FaceIgniteError(write_error(exc, path, option)) from None
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def save_png(figure, path: str) -> str:
    """Write a matplotlib ``figure`` to ``path`` as a PNG, its folder made, through a temporary
    file renamed into place (a reader never sees half an image); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.png"
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
