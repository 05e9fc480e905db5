"""The face path on a GPU: Partial FC at 100 k identities, the ``.rec`` loader per worker, and
IJB-style embedding throughput.  Each table has its baseline measured in the same run.

    python bench/gpu_face.py partial_fc --classes 100000           # head step: time, memory
    python bench/gpu_face.py rec_loader --workers 1 2 4 8          # images/s per loader worker
    python bench/gpu_face.py ijb_embed --model iresnet50           # flip-feature images/s

``partial_fc``: one training step of the classification head alone (a fixed batch of
``--batch_size`` 512-d embeddings → softmax + center loss → backward → SGD with momentum), the
full classifier (:class:`~faceignite.losses.SoftmaxCenterLoss`, baseline) against
:class:`~faceignite.losses.partial_fc.PartialFC` at ``--sample_rates`` on one process; ms per
step and peak memory (parameters, optimizer state and the step's activations).

``rec_loader``: ``--images`` generated 112 px JPEGs of 200 identities, packed with
``faceignite.data.pack``; one pass of the training loader (decode + augment + collate) over the
identity folders (baseline) and over the ``.rec`` file, with each worker count: images/s, and
per worker, to set against the step's demand (bench_gpu.py).

``ijb_embed``: :func:`faceignite.ijb.images.embed_crops` (decode, five-point warp, flip, model,
features to a memory-mapped ``.npy``) on generated 250 px crops with landmarks: fp32 (baseline)
against bf16 autocast + channels_last, with ``--num_workers`` loader workers; and the model
alone on a resident batch (flip included), which bounds it.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

import numpy as np
from common import fmt, print_header, table


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("partial_fc", "rec_loader", "ijb_embed"))
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only dry-runs tiny sizes")
    p.add_argument("--classes", type=int, default=100_000, help="partial_fc: identities (100000)")
    p.add_argument("--dim", type=int, default=512, help="partial_fc: embedding size (512)")
    p.add_argument("--sample_rates", type=float, nargs="+", default=[0.1, 1.0],
                   help="partial_fc: Partial FC sample rates (0.1 1.0)")
    p.add_argument("--batch_size", type=int, default=256, help="Batch size (256)")
    p.add_argument("--steps", type=int, default=20, help="partial_fc: timed steps per round (20)")
    p.add_argument("--rounds", type=int, default=3, help="Timed rounds, median reported (3)")
    p.add_argument("--images", type=int, default=4000, help="rec_loader/ijb_embed: images (4000)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="rec_loader: loader worker counts (1 2 4 8)")
    p.add_argument("--num_workers", type=int, default=8, help="ijb_embed: loader workers (8)")
    p.add_argument("--model", default="iresnet50", help="ijb_embed: architecture (iresnet50)")
    p.add_argument("--image_size", type=int, default=112, help="Input side in pixels (112)")
    return p.parse_args(argv)


def median_seconds(fn: Callable[[], None], rounds: int, sync: Callable[[], None]) -> float:
    """Median wall time (s) of ``rounds`` calls of ``fn``, each ended by ``sync``."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def partial_fc(args: argparse.Namespace, device, sync) -> None:
    import torch

    from faceignite.losses import SoftmaxCenterLoss
    from faceignite.losses.partial_fc import PartialFC

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(args.batch_size, args.dim, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, args.classes, (args.batch_size,), generator=gen).to(device)
    heads = {"full classifier (SoftmaxCenterLoss, baseline)":
             lambda: SoftmaxCenterLoss(args.classes, args.dim, 0.003)}
    for rate in args.sample_rates:
        heads[f"Partial FC, sample rate {rate:g}"] = (
            lambda r=rate: PartialFC(args.classes, args.dim, "softmax", 0.003, sample_rate=r,
                                     ddp_model=False))
    rows, base_ms = [], None
    for name, make in heads.items():
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
        head = make().to(device).train()
        opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

        def steps(n: int = args.steps) -> None:
            for _ in range(n):
                emb.grad = None
                out = head(emb, labels)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()

        steps(3)  # warm-up: optimizer state, kernels
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = median_seconds(steps, args.rounds, sync) / args.steps * 1e3
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30 \
            if device.type == "cuda" else float("nan")
        base_ms = base_ms or ms
        rows.append([name, fmt(ms, 2), f"{base_ms / ms:.2f}x", fmt(peak, 2)])
        del head, opt
    print(table(f"classification head step, {args.classes:,} identities, {args.dim}-d, batch "
                f"{args.batch_size}, one process ({device_name(device)})",
                ["head", "ms / step", "speed-up", "peak GiB"], rows), flush=True)


def rec_loader(args: argparse.Namespace, device, sync) -> None:
    from common import write_jpeg_tree

    from faceignite.data import FaceImageDataset, train_transform
    from faceignite.data.index import scan_identity_folders
    from faceignite.data.loaders import make_loader
    from faceignite.data.pack import pack_folder
    from faceignite.data.record_index import load_or_build_record_index
    from faceignite.data.sampler import EpochSampler

    with tempfile.TemporaryDirectory() as tmp:
        src, rec = os.path.join(tmp, "src"), os.path.join(tmp, "rec")
        write_jpeg_tree(src, 200, max(1, args.images // 200), size=args.image_size)
        pack_folder(src, rec, progress=False)
        sources = {"identity folders (baseline)": scan_identity_folders(src),
                   ".rec file": load_or_build_record_index(rec)}
        rows = []
        for workers in args.workers:
            base = None
            for name, index in sources.items():
                read = {} if name.startswith("identity") else {"read": index.image_reader()}
                dataset = FaceImageDataset(index.samples(), train_transform(args.image_size),
                                           **read)
                loader = make_loader(dataset, args.batch_size, workers,
                                     EpochSampler(len(dataset), 0), drop_last=False,
                                     pin_memory=device.type == "cuda")

                def one_pass() -> None:
                    for _ in loader:
                        pass

                one_pass()  # start the persistent workers, warm the page cache
                rate = len(dataset) / median_seconds(one_pass, args.rounds, lambda: None)
                base = base or rate
                rows.append([f"{name}, {workers} worker(s)", fmt(rate), fmt(rate / workers),
                             f"{rate / base:.2f}x"])
                del loader
        print(table(f"training loader at {args.image_size} px, batch {args.batch_size}, "
                    f"{len(dataset)} images ({os.cpu_count()} CPUs)",
                    ["source", "images/s", "images/s per worker", "vs folders"], rows), flush=True)


def ijb_embed(args: argparse.Namespace, device, sync) -> None:
    import torch
    from common import write_jpeg_tree

    from faceignite.align.five_point import template_points
    from faceignite.ijb.images import embed_crops, flip_features
    from faceignite.models import build_model
    from faceignite.runtime import Runtime

    model = build_model(args.model, 512).to(device).eval()
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpeg_tree(os.path.join(tmp, "crops"), 100, max(1, args.images // 100))
        # landmarks of a face in the middle of a 250 px crop: the template, scaled and moved
        landmarks = np.tile(template_points(112) * 1.4 + 47, (len(paths), 1, 1))
        for amp, channels_last in (("off", False), ("bf16", True)):
            runtime = Runtime(device, amp, channels_last)
            runtime.prepare_model(model)
            label = "fp32, NCHW (baseline)" if amp == "off" else "bf16 autocast, channels_last"
            batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                                device=device)
            batch = runtime.prepare(batch)
            with runtime.autocast():
                flip_features(model, batch)  # warm-up
                sync()
                s = median_seconds(lambda: flip_features(model, batch), args.rounds, sync)
                model_rate = args.batch_size / s
                out = os.path.join(tmp, f"features-{amp}.npy")
                embed_crops(model, paths[:args.batch_size], landmarks, args.image_size, out,
                            device, args.batch_size, args.num_workers, progress=False)
                s = median_seconds(lambda: embed_crops(
                    model, paths, landmarks, args.image_size, out, device, args.batch_size,
                    args.num_workers, progress=False), args.rounds, sync)
            rate = len(paths) / s
            base = base or rate
            rows.append([label, fmt(model_rate), fmt(rate), f"{rate / base:.2f}x"])
    print(table(f"IJB-style embedding, {args.model} at {args.image_size} px with flip, batch "
                f"{args.batch_size}, {args.num_workers} loader workers, {len(paths)} crops "
                f"({device_name(device)})",
                ["precision, layout", "model alone images/s", "embed_crops images/s",
                 "speed-up"], rows), flush=True)


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"


def main(argv=None) -> None:
    args = parse(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    print_header(f"gpu_face {args.what}", args)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    {"partial_fc": partial_fc, "rec_loader": rec_loader, "ijb_embed": ijb_embed}[args.what](
        args, device, sync)


if __name__ == "__main__":
    main()
