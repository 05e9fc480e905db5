"""List and remove old run folders and caches of an ``--output_dir``, showing their sizes.

    python -m faceignite.runs list                         # runs/: every run, its size, age, best
    python -m faceignite.runs clean --older_than 30        # remove runs untouched for 30 days
    python -m faceignite.runs clean resnet34_center-20261204-101500 --caches --dry_run

``clean`` removes only what it is told to (run names, ``--older_than DAYS``, ``--caches``);
without any of them it refuses.  A run whose files changed in the last few minutes is taken
for a live one and left alone (``--force`` removes it anyway).  Sizes count a file hard-linked
twice (best and latest checkpoint of one iteration) once.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Sequence

from faceignite.checkpoint.files import BEST_RE
from faceignite.cli import exits_on_error
from faceignite.data.index import CACHE_FOLDER
from faceignite.errors import FaceIgniteError

LIVE_SECONDS = 300  # files written this recently: a run still going
DAY = 86400.0


@dataclass
class Entry:
    """One run folder (or the cache) of an output folder: its size in bytes and age in days
    (since its newest file changed)."""

    name: str
    path: str
    size: int
    age_days: float
    best: str = ""
    cache: bool = False

    @property
    def live(self) -> bool:
        return self.age_days * DAY < LIVE_SECONDS


def human_size(size: int) -> str:
    """``size`` bytes as ``812 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def measure(path: str) -> tuple[int, float]:
    """(bytes, newest modification time) of a file or folder; hard links counted once,
    symbolic links not followed."""
    seen: set[tuple[int, int]] = set()
    total, newest = 0, 0.0

    def add(p: str) -> None:
        nonlocal total, newest
        try:
            st = os.lstat(p)
        except OSError:
            return
        newest = max(newest, st.st_mtime)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size

    add(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                add(os.path.join(root, name))
    return total, newest


def _best(path: str) -> str:
    try:
        names = os.listdir(path)
    except OSError:
        return ""
    found = [(int(m.group(1)), m.group(2), m.group(3)) for n in names if (m := BEST_RE.match(n))]
    return f"{max(found)[1]} {max(found)[2]}" if found else ""


def scan(output_dir: str, now: float | None = None) -> list[Entry]:
    """The run folders of ``output_dir`` (oldest first) and, last, its caches (``cache/``,
    and ``index-*.json`` files left by older versions in the folder itself)."""
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    if not os.path.isdir(output_dir):
        raise FaceIgniteError(f"--output_dir {output_dir}: no such folder")
    now = time.time() if now is None else now
    runs, caches = [], []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        size, newest = measure(path)
        age = max(0.0, (now - newest) / DAY)
        if name == CACHE_FOLDER or (name.startswith("index-") and name.endswith(".json")):
            caches.append(Entry(name, path, size, age, cache=True))
        elif os.path.isdir(path) and not os.path.islink(path):
            runs.append(Entry(name, path, size, age, _best(path)))
    runs.sort(key=lambda e: -e.age_days)
    return runs + caches


def table(entries: Sequence[Entry]) -> str:
    """One line per entry: size, age, name, best checkpoint metric; and the total."""
    lines = [f"{'size':>9}  {'age':>7}  name"]
    for e in entries:
        note = " (cache)" if e.cache else (" (live?)" if e.live else "")
        best = f"  best {e.best}" if e.best else ""
        lines.append(f"{human_size(e.size):>9}  {e.age_days:6.1f}d  {e.name}{note}{best}")
    lines.append(f"{human_size(sum(e.size for e in entries)):>9}  total, {len(entries)} entries")
    return "\n".join(lines)


def select(entries: Sequence[Entry], names: Sequence[str], older_than: float | None,
           caches: bool) -> list[Entry]:
    """What ``clean`` removes: runs named, runs older than ``older_than`` days, the caches.
    A name that is no run of the folder raises one line naming it."""
    if not names and older_than is None and not caches:
        raise FaceIgniteError("clean removes only what it is told to: give run names, "
                              "--older_than DAYS, or --caches (and --dry_run to see first)")
    by_name = {e.name: e for e in entries if not e.cache}
    unknown = [n for n in names if os.path.basename(os.path.normpath(n)) not in by_name]
    if unknown:
        raise FaceIgniteError(f"no run named {', '.join(unknown)} in this --output_dir "
                              f"(python -m faceignite.runs list shows them)")
    chosen = {os.path.basename(os.path.normpath(n)) for n in names}
    picked = [e for e in entries if not e.cache and (e.name in chosen or (
        older_than is not None and e.age_days >= older_than))]
    if caches:
        picked += [e for e in entries if e.cache]
    return picked


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceignite.runs",
                                description="List and remove old run folders and caches, with "
                                            "their sizes")
    sub = p.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="Every run folder and cache, its size and age")
    clean = sub.add_parser("clean", help="Remove the runs (and caches) you select")
    for q in (listing, clean):
        q.add_argument("--output_dir", default="runs",
                       help="The folder of the run folders (default: runs)")
    clean.add_argument("names", nargs="*", help="Run folder names to remove")
    clean.add_argument("--older_than", type=float, metavar="DAYS",
                       help="Remove every run whose newest file is at least DAYS days old")
    clean.add_argument("--caches", action="store_true",
                       help="Remove the caches too (index caches, built-in data: rebuilt "
                            "when needed)")
    clean.add_argument("--dry_run", action="store_true",
                       help="Show what would be removed, remove nothing")
    clean.add_argument("--force", action="store_true",
                       help="Remove runs written in the last few minutes too (else taken "
                            "for live and kept)")
    return p


@exits_on_error
def main(argv: Sequence[str] | None = None) -> list[Entry]:
    """``list``: print the table, return every entry; ``clean``: remove (or with
    ``--dry_run`` show) the selection, return what was (or would be) removed."""
    args = get_args_parser().parse_args(argv)
    entries = scan(args.output_dir)
    if args.command == "list":
        print(table(entries), flush=True)
        return entries
    if args.older_than is not None and not args.older_than >= 0:
        raise FaceIgniteError(f"--older_than {args.older_than}: must be 0 or more days")
    picked = select(entries, args.names, args.older_than, args.caches)
    kept = [e for e in picked if e.live and not e.cache and not args.force]
    picked = [e for e in picked if e not in kept]
    for e in kept:
        print(f"kept {e.name}: written {e.age_days * DAY:.0f} s ago, perhaps still running "
              f"(--force removes it)", flush=True)
    verb = "would remove" if args.dry_run else "removed"
    for e in picked:
        if not args.dry_run:
            try:
                if os.path.isdir(e.path) and not os.path.islink(e.path):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
            except OSError as exc:
                raise FaceIgniteError(f"cannot remove {e.path}: {exc.strerror or exc}") from None
        print(f"{verb} {e.name} ({human_size(e.size)})", flush=True)
    print(f"{verb} {len(picked)} entries, {human_size(sum(e.size for e in picked))}", flush=True)
    return picked


if __name__ == "__main__":
    main(sys.argv[1:])
