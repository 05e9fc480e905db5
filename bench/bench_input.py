"""Input pipeline: JPEG decoders, then decode + augment + collate per loader worker.

    python bench/bench_input.py                          # 512 generated 250 px JPEGs → 112 px
    python bench/bench_input.py --source celeba --image_size 224

Table 1 times the decoders alone (PIL is the baseline).  Table 2 times the project's loader
(OpenCV + albumentations, :func:`faceignite.data.loaders.make_loader`) against the original's
``torchvision.datasets.ImageFolder`` + PIL + ``torchvision.transforms`` with the same
augmentations, over the same files, both in one process (``--workers 0``: what one loader
worker delivers, torch and OpenCV limited to one thread as in a worker).  ``--workers N`` adds
rows with N loader processes.
"""
from __future__ import annotations

import argparse
import os
import tempfile

from common import (CLOCKS, SHARED_DATA, Result, add_clock_arg, add_rounds_arg, interleaved,
                    print_header, rate_table, unit, write_jpeg_tree)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512, help="JPEG files per pass (default: 512)")
    p.add_argument("--source", default="generated",
                   help="'generated' (250 px face-like JPEGs in a temp dir), 'celeba' "
                        "(shared celeba_subset/aligned-160) or a folder of identity folders")
    p.add_argument("--source_size", type=int, default=250,
                   help="Generated image size (default: 250)")
    p.add_argument("--image_size", type=int, default=112, help="Training crop size (default: 112)")
    p.add_argument("--batch_size", type=int, default=32, help="Loader batch size (default: 32)")
    p.add_argument("--workers", type=int, default=0,
                   help="Also time both loaders with this many worker processes (default: off)")
    p.add_argument("--skip_decoders", action="store_true", help="Only the pipeline table")
    add_rounds_arg(p, 5)
    add_clock_arg(p)
    return p.parse_args(argv)


def decoder_candidates(paths: list[str]) -> dict:
    """Decode every file to an RGB HWC uint8 array, four ways (PIL first: the baseline)."""
    import cv2
    import numpy as np
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from faceignite.data.dataset import read_rgb

    def pil() -> int:
        for p in paths:
            with Image.open(p) as im:
                np.asarray(im.convert("RGB"))
        return len(paths)

    def opencv() -> int:  # the project's decoder: imread (BGR) + cvtColor
        for p in paths:
            read_rgb(p)
        return len(paths)

    def torchvision_io() -> int:
        for p in paths:
            decode_jpeg(read_file(p), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        return len(paths)

    cands = {"PIL Image.open + convert (baseline)": pil,
             "cv2.imread + cvtColor (faceignite read_rgb)": opencv,
             "torchvision.io.decode_jpeg": torchvision_io}
    if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.10 decodes straight to RGB
        def opencv_rgb() -> int:
            for p in paths:
                cv2.imread(p, cv2.IMREAD_COLOR_RGB)
            return len(paths)
        cands["cv2.imread IMREAD_COLOR_RGB"] = opencv_rgb
    return cands


def baseline_transform(size: int):
    """The project's train augmentations written with torchvision.transforms on PIL images."""
    from torchvision import transforms as T

    from faceignite.data.transforms import MEAN, STD

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


class SeedEveryTransform:
    """The project's augmentations seeded per sample with albumentations' own
    ``Compose.set_random_seed`` (a generator pair per transform): how the loader seeded before
    :func:`faceignite.data.dataset.seed_transform`."""

    def __init__(self, compose):
        self.compose = compose

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __call__(self, **data):
        return self.compose(**data)


def loader_candidates(root: str, paths: list[str], args: argparse.Namespace, workers: int) -> dict:
    """One full pass over ``paths`` through each loader; returns images delivered."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from faceignite.data import FaceImageDataset, train_transform
    from faceignite.data.loaders import make_loader
    from faceignite.data.sampler import EpochSampler

    folder = ImageFolder(root, transform=baseline_transform(args.image_size))
    wanted = set(paths)
    keep = [i for i, (p, _) in enumerate(folder.samples) if p in wanted]
    samples = [folder.samples[i] for i in keep]
    baseline = DataLoader(Subset(folder, keep), batch_size=args.batch_size, shuffle=True,
                          num_workers=workers)
    def project_loader(transform):
        return make_loader(FaceImageDataset(samples, transform), args.batch_size, workers,
                           EpochSampler(len(samples), seed=0), drop_last=False, pin_memory=False)

    ours = project_loader(train_transform(args.image_size))
    before = project_loader(SeedEveryTransform(train_transform(args.image_size)))
    suffix = f", {workers} workers" if workers else ""

    def run(loader) -> int:
        n = 0
        for batch in loader:
            n += batch[1].numel()
        return n

    def baseline_pass() -> int:
        torch.manual_seed(0)
        return run(baseline)

    return {f"ImageFolder + PIL + transforms (baseline{suffix})": baseline_pass,
            f"faceignite loader: OpenCV + albumentations{suffix}": lambda: run(ours),
            f"same, seeded by Compose.set_random_seed (before){suffix}": lambda: run(before)}


def source_files(args: argparse.Namespace, tmp: str) -> tuple[str, list[str]]:
    """``(root, the first --images JPEG paths under it)``, generating them when asked."""
    if args.source == "generated":
        root = os.path.join(tmp, "jpegs")
        per_identity = 32
        identities = -(-args.images // per_identity)
        paths = write_jpeg_tree(root, identities, per_identity, args.source_size)
        return root, paths[: args.images]
    root = args.source
    if args.source == "celeba":
        root = str(SHARED_DATA / "celeba_subset" / "aligned-160")
    if not os.path.isdir(root):
        raise SystemExit(f"image folder not found: {root}")
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root)
                   for f in fs if f.lower().endswith((".jpg", ".jpeg")))
    return root, paths[: args.images]


def main(argv=None) -> list[Result]:
    args = parse(argv)
    import cv2
    import torch

    torch.set_num_threads(1)  # what a DataLoader worker gets
    cv2.setNumThreads(1)
    print_header("bench_input", args)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_input-") as tmp:
        root, paths = source_files(args, tmp)
        kind = f"{len(paths)} JPEGs from {args.source}"
        clock, units = CLOCKS[args.clock], unit(args.clock)
        if not args.skip_decoders:
            dec = interleaved(decoder_candidates(paths), args.rounds, clock=clock)
            print(rate_table(f"Decode only, one process ({kind})", dec, units), flush=True)
            results += dec
        pipe = interleaved(loader_candidates(root, paths, args, 0), args.rounds, clock=clock)
        print(rate_table(f"Decode + augment + collate to {args.image_size} px, per worker "
                         f"(one process, batch {args.batch_size}; {kind})", pipe, units),
              flush=True)
        results += pipe
        if args.workers:  # the work happens in other processes: wall clock only
            multi = interleaved(loader_candidates(root, paths, args, args.workers), args.rounds)
            print(rate_table(f"Same with {args.workers} worker processes (wall clock)", multi),
                  flush=True)
            results += multi
    return results


if __name__ == "__main__":
    main()
