"""Dataset index: first scan and cached re-start over a generated tree of ~200 k files.

    python bench/bench_index.py                          # 2,000 identities x 100 files
    python bench/bench_index.py --identities 200 --images_each 50

The tree (VGGFace2 layout: ``n000123/0001_01.jpg``; empty files, the index never decodes) is
written to a temp dir and deleted afterwards.  Baseline: ``torchvision.datasets.ImageFolder``,
which the original trainer built at every start.  Candidates: the project's first scan
(:func:`faceignite.data.index.load_or_build_index`, one ``os.scandir`` pass + writing the JSON
cache) and its re-start from that cache.  The files stay in the OS page cache between rounds:
a first scan over a cold network disk is slower than shown, the cached re-start is not.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import (CLOCKS, Result, add_clock_arg, add_rounds_arg, interleaved, print_header,
                    rate_table)

VGGFACE2_IMAGES = 3_311_286


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=2000, help="Identity folders (default: 2000)")
    p.add_argument("--images_each", type=int, default=100, help="Files per identity (default: 100)")
    add_rounds_arg(p, 3)
    add_clock_arg(p)
    return p.parse_args(argv)


def write_tree(root: str, identities: int, images_each: int) -> int:
    """Empty ``.jpg`` files in VGGFace2's layout, plus one non-image per folder to filter out."""
    for i in range(identities):
        folder = os.path.join(root, f"n{i:06d}")
        os.makedirs(folder)
        for j in range(images_each):
            open(os.path.join(folder, f"{j:04d}_01.jpg"), "wb").close()
        open(os.path.join(folder, "notes.txt"), "wb").close()
    return identities * images_each


def main(argv=None) -> list[Result]:
    args = parse(argv)
    from torchvision.datasets import ImageFolder

    from faceignite.data.index import load_or_build_index

    print_header("bench_index", args)
    with tempfile.TemporaryDirectory(prefix="bench_index-") as tmp:
        root, cache = os.path.join(tmp, "train"), os.path.join(tmp, "cache", "index.json")
        start = time.perf_counter()
        files = write_tree(root, args.identities, args.images_each)
        print(f"wrote {files:,} files in {args.identities:,} folders in "
              f"{time.perf_counter() - start:.1f} s\n", flush=True)

        def imagefolder() -> int:
            return len(ImageFolder(root).samples)

        def first_scan() -> int:
            if os.path.exists(cache):
                os.remove(cache)
            return len(load_or_build_index(root, cache))

        def restart() -> int:
            if not os.path.exists(cache):
                load_or_build_index(root, cache)
            return len(load_or_build_index(root, cache))

        for name, fn in (("ImageFolder", imagefolder), ("scan", first_scan), ("restart", restart)):
            if fn() != files:
                raise SystemExit(f"{name} indexed the wrong number of files")
        results = interleaved({"torchvision ImageFolder (baseline)": imagefolder,
                               "faceignite first scan (+ write cache)": first_scan,
                               "faceignite cached re-start": restart}, args.rounds,
                              clock=CLOCKS[args.clock])
    what = "CPU seconds" if args.clock == "cpu" else "seconds"
    seconds, projected = f"{what} (median)", f"{what} for {VGGFACE2_IMAGES / 1e6:.1f} M files"
    for res in results:
        res.extra[seconds] = f"{files / res.median:.2f}"
        res.extra[projected] = f"{VGGFACE2_IMAGES / res.median:.1f}"
    print(rate_table(f"Index of {files:,} files in {args.identities:,} identity folders", results,
                     unit="files/s" if args.clock == "wall" else "files/CPU-s",
                     extra_columns=[seconds, projected]), flush=True)
    return results


if __name__ == "__main__":
    main()
