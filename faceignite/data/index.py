"""The file index of a VGGFace2-style root: one ``os.scandir`` pass, cached as JSON."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from faceignite.errors import FaceIgniteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
INDEX_VERSION = 1
logger = logging.getLogger(__name__)


@dataclass
class ImageIndex:
    """Identity names (sorted; class index = position) and, per identity, its sorted file names."""

    root: str
    classes: list[str]
    files: list[list[str]]

    def __len__(self) -> int:
        return sum(len(f) for f in self.files)

    def samples(self) -> list[tuple[str, int]]:
        """``(absolute path, class index)`` for every image, in class then file order."""
        return [(os.path.join(self.root, c, f), label)
                for label, (c, names) in enumerate(zip(self.classes, self.files)) for f in names]

    def labels(self) -> list[int]:
        return [label for label, names in enumerate(self.files) for _ in names]


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


def scan_identity_folders(root: str) -> ImageIndex:
    """Scan ``root`` (one sub-folder per identity holding JPEG/PNG files) in one pass.

    Raises :class:`FaceIgniteError` naming the path when it is missing or holds no image.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FaceIgniteError(f"dataset folder not found: {root}")
    classes, files = [], []
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in folders:
        with os.scandir(os.path.join(root, name)) as entries:
            images = sorted(e.name for e in entries if e.is_file() and is_image(e.name))
        if images:
            classes.append(name)
            files.append(images)
    if not classes:
        raise FaceIgniteError(
            f"no images in dataset folder {root}: expected one sub-folder per identity "
            f"holding {'/'.join(IMAGE_EXTENSIONS)} files")
    return ImageIndex(root, classes, files)


def _fingerprint(root: str) -> str:
    """Changes when identity folders are added or removed (the root's own mtime)."""
    st = os.stat(root)
    return f"{st.st_mtime_ns}"


def default_cache_path(root: str, cache_dir: str) -> str:
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"index-{digest}.json")


def load_or_build_index(root: str, cache_path: str | None = None) -> ImageIndex:
    """Return the index of ``root``, read from ``cache_path`` when it is still current.

    The cache is rebuilt when the root's modification time changes (an identity folder added
    or removed); delete the file to force a rescan after adding images inside a folder.
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FaceIgniteError(f"dataset folder not found: {root}")
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cached = json.load(f)
            if (cached.get("version") == INDEX_VERSION and cached.get("root") == root
                    and cached.get("fingerprint") == _fingerprint(root)):
                index = ImageIndex(root, cached["classes"], cached["files"])
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
            json.dump({"version": INDEX_VERSION, "root": root, "fingerprint": _fingerprint(root),
                       "classes": index.classes, "files": index.files}, f)
        os.replace(tmp, cache_path)
    return index


def index_digest(classes: list[str], files: list[list[str]]) -> str:
    """A fingerprint of an image index: identity and file names, in order (SHA-1, hex)."""
    h = hashlib.sha1()
    for name, names in zip(classes, files):
        h.update(name.encode())
        h.update(b"\0" + "\0".join(names).encode() + b"\n")
    return h.hexdigest()
