"""The file index of a VGGFace2-style root: one ``os.scandir`` pass, cached as JSON.

The cache is used while the fingerprint of the root holds: the modification time of the root
and of every identity folder (a file added, removed or renamed inside a folder changes that
folder's time), so a changed folder is always rescanned."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from faceignite.errors import FaceIgniteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
INDEX_VERSION = 2  # 2: per-folder fingerprint
logger = logging.getLogger(__name__)


@dataclass
class ImageIndex:
    """Identity names (sorted; class index = position) and, per identity, its sorted file names."""

    root: str
    classes: list[str]
    files: list[list[str]]
    fingerprint: str = ""  # of the scan (see :func:`folder_fingerprint`); "" when unknown

    def __len__(self) -> int:
        return sum(len(f) for f in self.files)

    def samples(self) -> list[tuple[str, int]]:
        """``(absolute path, class index)`` for every image, in class then file order."""
        return [(os.path.join(self.root, c, f), label)
                for label, (c, names) in enumerate(zip(self.classes, self.files)) for f in names]

    def labels(self) -> list[int]:
        return [label for label, names in enumerate(self.files) for _ in names]

    def digest(self) -> str:
        """:func:`index_digest` of this index (identity and file names)."""
        return index_digest(self.classes, self.files)


def index_digest(classes: list[str], files: list[list[str]]) -> str:
    """A fingerprint of an image index (identity and file names, in order): SHA-1 hex."""
    h = hashlib.sha1()
    for name, names in zip(classes, files):
        h.update(name.encode())
        h.update(b"\0" + "\0".join(names).encode() + b"\n")
    return h.hexdigest()


def is_image(name: str) -> bool:
    """A JPEG/PNG file name that is not hidden."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(root: str, exclude: str | None = None) -> list[str]:
    """``root``-relative paths of every image at any depth (sorted; hidden folders and the folder
    ``exclude`` skipped)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.join(folder, d) != exclude)
        found.extend(os.path.relpath(os.path.join(folder, f), root) for f in files if is_image(f))
    return sorted(found)


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()`` (``kind`` "dir") or ``entry.is_file()``; False, with a warning naming
    it, for an entry that cannot be followed (a symbolic link loop, ELOOP; a broken mount)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:
        logger.warning("skipping %s: %s", entry.path, exc.strerror or exc)
        return False


def _identity_folders(root: str) -> list[tuple[str, int]]:
    """``(name, modification time in ns)`` of every non-hidden sub-folder of ``root``, sorted."""
    with os.scandir(root) as entries:
        return sorted((e.name, e.stat().st_mtime_ns) for e in entries
                      if not e.name.startswith(".") and _entry_is(e, "dir"))


def folder_fingerprint(root: str, folders: list[tuple[str, int]] | None = None) -> str:
    """SHA-1 of the modification times of ``root`` and of each identity folder (``folders``
    from :func:`_identity_folders`, read now when not given): changes when an identity folder
    is added or removed, or a file is added, removed or renamed inside one."""
    h = hashlib.sha1(str(os.stat(root).st_mtime_ns).encode())
    for name, mtime in _identity_folders(root) if folders is None else folders:
        h.update(f"\0{name}\0{mtime}".encode())
    return h.hexdigest()


def scan_identity_folders(root: str) -> ImageIndex:
    """Scan ``root`` (one sub-folder per identity holding JPEG/PNG files) in one pass.

    The index's ``fingerprint`` is taken before the folders are listed, so a change made during
    the scan makes the next fingerprint differ.  Raises :class:`FaceIgniteError` naming the path
    when it is missing or holds no image.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FaceIgniteError(f"dataset folder not found: {root}")
    folders = _identity_folders(root)
    fingerprint = folder_fingerprint(root, folders)
    classes, files = [], []
    for name, _ in folders:
        with os.scandir(os.path.join(root, name)) as entries:
            images = sorted(e.name for e in entries if is_image(e.name) and _entry_is(e, "file"))
        if images:
            classes.append(name)
            files.append(images)
    if not classes:
        raise FaceIgniteError(
            f"no images in dataset folder {root}: expected one sub-folder per identity "
            f"holding {'/'.join(IMAGE_EXTENSIONS)} files")
    return ImageIndex(root, classes, files, fingerprint)


CACHE_FOLDER = "cache"  # under --output_dir: index caches and the built-in data, nothing else


def cache_folder(output_dir: str) -> str:
    """The one folder of ``output_dir`` holding its caches (``python -m faceignite.runs``
    lists and cleans it): ``<output_dir>/cache``."""
    return os.path.join(output_dir, CACHE_FOLDER)


def default_cache_path(root: str, output_dir: str) -> str:
    """``<output_dir>/cache/index-<hash of root's path>.json``."""
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(cache_folder(output_dir), f"index-{digest}.json")


def load_or_build_index(root: str, cache_path: str | None = None) -> ImageIndex:
    """Return the index of ``root``, read from ``cache_path`` when it is still current.

    The cache is rebuilt when :func:`folder_fingerprint` changes: an identity folder added or
    removed, or an image added, removed or renamed inside one (one ``stat`` per identity
    folder to check).  An image rewritten in place under the same name is not noticed.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FaceIgniteError(f"dataset folder not found: {root}")
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cached = json.load(f)
            if (cached.get("version") == INDEX_VERSION and cached.get("root") == root
                    and cached.get("fingerprint") == folder_fingerprint(root)):
                index = ImageIndex(root, cached["classes"], cached["files"], cached["fingerprint"])
                logger.info("image index: %d images of %d identities read from %s",
                            len(index), len(index.classes), cache_path)
                return index
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("image index cache %s unreadable (%s): rescanning", cache_path, exc)
    index = scan_identity_folders(root)
    logger.info("image index: %d images of %d identities scanned in %s",
                len(index), len(index.classes), root)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        tmp = f"{cache_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": INDEX_VERSION, "root": root, "fingerprint": index.fingerprint,
                       "classes": index.classes, "files": index.files}, f)
        os.replace(tmp, cache_path)
    return index
