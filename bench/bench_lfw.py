"""LFW validation wall time: one full 6,000-pair validation with and without de-duplication.

    python bench/bench_lfw.py                             # real LFW, resnet34 at 112 px
    python bench/bench_lfw.py --image_size 64 --rounds 1  # a quicker look on a CPU

Baseline: the original trainer's way, both images of every pair embedded (12,000 slots), then
the metrics.  Candidate: faceignite's evaluator (:func:`faceignite.verification.create_pairs_evaluator`),
each unique image embedded once (7,701), then the same metrics.  Both use the same model
(randomly initialised, eval mode), transforms, loader settings and batch size, and must give the
same metrics.  Times cover decoding, resizing, embedding and the metrics; the metrics alone are
timed separately.  The CPU-seconds column (``--num_workers 0`` puts all the work in this process)
is the steadier measure on a machine shared with other jobs.  Needs ../shared/data/lfw
(``pairs.txt`` and ``lfw-mtcnn-160/``).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import (SHARED_DATA, add_rounds_arg, add_threads_arg, interleaved, print_header,
                    rate_table, set_threads)


def parse(argv=None) -> argparse.Namespace:
    from faceignite.config import default_num_workers
    from faceignite.models import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lfw", default=str(SHARED_DATA / "lfw" / "lfw-mtcnn-160"),
                   help="LFW image folder (default: ../shared/data/lfw/lfw-mtcnn-160)")
    p.add_argument("--lfw_pairs", default=str(SHARED_DATA / "lfw" / "pairs.txt"),
                   help="Pairs file (default: ../shared/data/lfw/pairs.txt)")
    p.add_argument("--model", default="resnet34", choices=ARCHITECTURES)
    p.add_argument("--image_size", type=int, default=112, help="Input size (default: 112)")
    p.add_argument("--batch_size", type=int, default=128, help="Batch size (default: 128)")
    p.add_argument("--num_workers", type=int, default=default_num_workers(),
                   help="Loader workers (default: half the CPUs, max 8)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--flip", action="store_true", help="Flip test-time augmentation in both")
    add_rounds_arg(p, 1)
    add_threads_arg(p)
    return p.parse_args(argv)


def slots_validation(model, pairs, paths, args, device):
    """The baseline: embed the two images of each pair in pair order, then the protocol."""
    import torch
    from ignite.engine import Events

    from faceignite.runtime import Runtime
    from faceignite.verification import create_embedding_engine, evaluate_distances, image_loader, pair_distances

    slots = [paths[i] for pair in zip(pairs.left, pairs.right) for i in pair]
    engine = create_embedding_engine(model, Runtime(device, args.amp), args.flip)
    chunks = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: chunks.append(e.state.output[0]))
    engine.run(image_loader(slots, args.image_size, args.batch_size, args.num_workers,
                            device.type == "cuda"))
    embeddings = torch.cat(chunks).numpy()
    if len(embeddings) != len(slots):
        raise SystemExit("the baseline lost undecodable images: use a clean LFW copy")
    n = len(pairs)
    distances = pair_distances(embeddings, np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2))
    return evaluate_distances(distances, pairs.issame, pairs.folds)


def main(argv=None):
    args = parse(argv)
    import torch

    from faceignite.runtime import Runtime
    from faceignite.verification import create_pairs_evaluator, evaluate_embeddings
    from faceignite.models import build_model

    print_header("bench_lfw", args)
    if not (os.path.isdir(args.lfw) and os.path.isfile(args.lfw_pairs)):
        print(f"real LFW not found ({args.lfw}, {args.lfw_pairs}): skipped")
        return []
    set_threads(args.threads)
    runtime = Runtime.create(args.device, args.amp)
    device = runtime.device
    torch.manual_seed(0)
    model = build_model(args.model, 128, image_size=args.image_size).to(device).eval()
    evaluator = create_pairs_evaluator(model, args.lfw, runtime, args.image_size,
                                       args.lfw_pairs, args.batch_size, args.flip,
                                       num_workers=args.num_workers)
    pairs, paths = evaluator.pairs, evaluator.paths
    results, cpu = {}, {"baseline": [], "dedup": []}  # CPU time: steadier on a shared machine

    def baseline() -> int:
        start = time.process_time()
        results["baseline"] = slots_validation(model, pairs, paths, args, device)
        cpu["baseline"].append(time.process_time() - start)
        return len(pairs)

    def deduplicated() -> int:
        start = time.process_time()
        results["dedup"] = evaluator.run()
        cpu["dedup"].append(time.process_time() - start)
        return len(pairs)

    timed = interleaved({f"every pair's 2 images ({2 * len(pairs):,} embedded, baseline)": baseline,
                         f"each unique image once ({len(paths):,} embedded)": deduplicated},
                        args.rounds, warmup=0)
    base, dedup = results["baseline"], results["dedup"]
    for name, value in base.metrics().items():  # same model, same images: same numbers
        other = dedup.metrics()[name]
        if (value is None) != (other is None) or (value is not None and abs(value - other) > 1e-4):
            raise SystemExit(f"{name} differs: {value} without vs {other} with de-dup")
    emb = np.random.default_rng(0).normal(size=(len(paths), 128))
    start = time.perf_counter()
    evaluate_embeddings(emb, pairs)
    metrics_seconds = time.perf_counter() - start
    column, cpu_column = "seconds per validation", "CPU seconds (this process, median)"
    for res, key in zip(timed, ("baseline", "dedup")):
        res.extra[column] = f"{len(pairs) / res.median:.1f}"
        res.extra[cpu_column] = f"{np.median(cpu[key]):.1f}"
    print(rate_table(f"One {len(pairs):,}-pair validation, {args.model} at {args.image_size} px on "
                     f"{device.type}{' + flip' if args.flip else ''} (LFW accuracy of this "
                     f"untrained model {100 * dedup.accuracy:.2f} % in both)",
                     timed, unit="pairs/s", extra_columns=[column, cpu_column]), flush=True)
    print(f"metrics alone (10-fold accuracy, TAR@FAR, AUC, EER on {len(pairs):,} pairs): "
          f"{metrics_seconds:.2f} s\n", flush=True)
    return timed


if __name__ == "__main__":
    main()
