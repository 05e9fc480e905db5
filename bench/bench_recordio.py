"""Reading training images: identity folders (one file per image) vs one packed RecordIO file.

    python bench/bench_recordio.py                                 # the CelebA subset, 3 rounds
    python bench/bench_recordio.py --source DIR --images 2000

The source tree (default: ``../shared/data/celeba_subset/aligned-160``, 6,276 real JPEGs) is
packed once with ``python -m faceignite.data.pack`` into a temp dir (timed, deleted afterwards).
Each pass then reads ``--images`` images in a shuffled order, as one DataLoader worker does
(one process, one file handle for the ``.rec``): baseline ``cv2.imread`` of each file (the
folder path), candidate the ``.rec`` reader (a seek + a read + ``cv2.imdecode``).  Two more rows
time the bytes alone (open + read each file vs seek + read in the ``.rec``), without decoding.
The files sit in the OS page cache after the first round: this measures the per-image software
cost on a local disk.  ``--cold`` reads a private copy of the source instead, and evicts the
copy's and the ``.rec``'s pages (``posix_fadvise(DONTNEED)``) at the start of every pass, so
the bytes come from the disk (both sides pay the same eviction calls).  On network storage the
per-file open/stat round trips the ``.rec`` saves are larger still.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from common import (CLOCKS, SHARED_DATA, add_clock_arg, add_rounds_arg, fmt, interleaved,
                    print_header, rate_table, table)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default=str(SHARED_DATA / "celeba_subset" / "aligned-160"),
                   help="Identity-folder root to pack and read (default: the CelebA subset)")
    p.add_argument("--images", type=int, default=3000,
                   help="Images read per pass, shuffled (default: 3000)")
    p.add_argument("--cold", action="store_true",
                   help="Read from the disk, not the page cache (a private copy, evicted each pass)")
    add_rounds_arg(p, 3)
    add_clock_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    import cv2

    from faceignite.data.dataset import read_rgb
    from faceignite.data.pack import pack_folder
    from faceignite.data.record_index import load_or_build_record_index

    cv2.setNumThreads(1)
    print_header("bench_recordio", args)
    with tempfile.TemporaryDirectory(prefix="bench_recordio-") as tmp:
        source = args.source
        if args.cold:
            source = shutil.copytree(args.source, os.path.join(tmp, "source"))
        out = os.path.join(tmp, "packed")
        start = time.perf_counter()
        stats = pack_folder(source, out, progress=False)
        seconds = time.perf_counter() - start
        index = load_or_build_record_index(out)
        from faceignite.data.index import scan_identity_folders

        paths = [p for p, _ in scan_identity_folders(source).samples()]
        keys = [k for k, _ in index.samples()]
        if len(keys) != len(paths):
            raise SystemExit("the packed file does not hold every image of the source")
        order = np.random.default_rng(0).permutation(len(paths))[:args.images].tolist()
        reader = index.image_reader()
        records = reader.records

        def evict() -> None:
            if args.cold:
                for path in [index.root] + [paths[i] for i in order]:
                    fd = os.open(path, os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)

        def folder_decode() -> int:
            evict()
            return sum(read_rgb(paths[i]) is not None for i in order)

        def rec_decode() -> int:
            evict()
            return sum(reader(keys[i]) is not None for i in order)

        def folder_bytes() -> int:
            evict()
            n = 0
            for i in order:
                with open(paths[i], "rb") as f:
                    n += bool(f.read())
            return n

        def rec_bytes() -> int:
            evict()
            return sum(bool(records.read(keys[i])) for i in order)

        for i in order[:20]:  # the same pixels both ways
            if not np.array_equal(read_rgb(paths[i]), reader(keys[i])):
                raise SystemExit(f"{paths[i]} decodes differently from its record")
        results = interleaved({"folder: cv2.imread per file (baseline)": folder_decode,
                               ".rec: seek + read + cv2.imdecode": rec_decode,
                               "folder: open + read bytes only": folder_bytes,
                               ".rec: seek + read bytes only": rec_bytes},
                              args.rounds, clock=CLOCKS[args.clock])
    unit = "images/s" if args.clock == "wall" else "images/CPU-s"
    print(table("Packing", ["source", "images", "identities", ".rec size", "seconds", "images/s"],
                [[os.path.basename(args.source.rstrip("/")), fmt(stats["images"], 0),
                  fmt(stats["identities"], 0), f"{stats['bytes'] / 1e6:.1f} MB",
                  f"{seconds:.2f}", fmt(stats["images"] / seconds)]]))
    cache = "cold page cache (read from the disk)" if args.cold else "files in the page cache"
    print(rate_table(f"Reading {len(order):,} images in shuffled order, one process (a loader "
                     f"worker), {cache}", results, unit))
    return results


if __name__ == "__main__":
    main()
