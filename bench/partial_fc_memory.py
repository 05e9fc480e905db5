"""Per-GPU memory of the classifier, the centres and their optimizer state, with and without
Partial FC, and a check of the formula on CPU processes.

    python bench/partial_fc_memory.py                     # 512-d, 8 GPUs, 128 images per GPU
    python bench/partial_fc_memory.py --gpus 16 --sample_rate 0.2 --check_classes 20001

The table is arithmetic (float32, 4 bytes a number) for the softmax + center-loss head
(classifier with bias, centres; ArcFace/CosFace: no bias and no centres), the largest shard
(``ceil(C / W)`` rows) and the model optimizer's SGD momentum (the centres' SGD has none):

* without ``--partial_fc`` (DDP) every GPU holds all ``C`` rows, and the logits of its own
  ``b`` images: ``b x C``;
* with it, ``ceil(C / W)`` rows, and the logits of the global batch ``W·b`` for the local
  classes: ``W·b x ceil(C / W)``, or ``x int(R·C/W)`` sampled ones at ``--sample_rate R``.

Gradients are dense: with sampling the unsampled rows get zeros, so a gradient is as large as
its parameter.  The logits column is one float32 ``B x K`` matrix: counted from the code, a
step holds two at its peak (the logits and the saved softmax, which the backward turns into
the gradient in place), three in the backward of a margin head.

The check (``--check_classes`` classes > 0) starts ``--check_processes`` gloo processes on the
CPU, builds the sharded criterion and its optimizers, takes one step and counts the bytes of its
parameters, gradients and optimizer state, next to the formula's bytes for that shard.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import tempfile

from common import print_header, table

FP32 = 4
DATASETS = {"VGGFace2": 8_631, "MS1MV3": 93_431, "Glint360K": 360_232, "WebFace42M": 2_059_906}
PARTS = ("classifier", "classifier grad", "SGD momentum", "centres", "centres grad")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=512, help="Embedding dimension (default: 512)")
    p.add_argument("--gpus", type=int, default=8, help="Processes that share the classes (8)")
    p.add_argument("--batch_per_gpu", type=int, default=128, help="Images per GPU (default: 128)")
    p.add_argument("--sample_rate", type=float, default=0.1,
                   help="The sampled column of the table (default: 0.1)")
    p.add_argument("--check_classes", type=int, default=10_001,
                   help="Classes of the CPU check; 0: no check (default: 10001)")
    p.add_argument("--check_processes", type=int, default=2, help="gloo processes (default: 2)")
    return p.parse_args(argv)


def local_rows(classes: int, world: int, sharded: bool) -> int:
    """Rows one process holds: all without sharding, else the largest shard."""
    return math.ceil(classes / world) if sharded else classes


def state_bytes(classes: int, dim: int, world: int = 1, sharded: bool = True,
                bias: bool = True, centres: bool = True, momentum: bool = True,
                rows: int | None = None) -> dict[str, int]:
    """Bytes of each part (:data:`PARTS`) on one process; ``rows`` overrides the shard size."""
    rows = local_rows(classes, world, sharded) if rows is None else rows
    weight = rows * dim * FP32 + (rows * FP32 if bias else 0)
    centre = rows * dim * FP32 if centres else 0
    return {"classifier": weight, "classifier grad": weight,
            "SGD momentum": weight if momentum else 0, "centres": centre, "centres grad": centre}


def logits_bytes(classes: int, world: int, batch_per_gpu: int, sharded: bool,
                 sample_rate: float = 1.0) -> int:
    """One float32 logits matrix of a step on one process."""
    if not sharded:
        return batch_per_gpu * classes * FP32
    rows = local_rows(classes, world, True)
    return batch_per_gpu * world * max(1, int(sample_rate * rows)) * FP32


def human(nbytes: float) -> str:
    """Binary units: GiB from 1 GiB up, else MiB."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:,.2f} GiB"
    return f"{nbytes / 2**20:,.1f} MiB"


def memory_table(dim: int, gpus: int, batch_per_gpu: int, sample_rate: float) -> str:
    header = ["identities", "layout", *PARTS, "total (params + state)",
              "logits, R = 1", f"logits, R = {sample_rate}"]
    rows = []
    for name, classes in DATASETS.items():
        for sharded in (False, True):
            parts = state_bytes(classes, dim, gpus, sharded)
            layout = f"partial FC, {gpus} GPUs" if sharded else "DDP, full copy"
            sampled = (human(logits_bytes(classes, gpus, batch_per_gpu, True, sample_rate))
                       if sharded else "-")
            rows.append([f"{name} {classes:,}", layout, *(human(parts[p]) for p in PARTS),
                         f"**{human(sum(parts.values()))}**",
                         human(logits_bytes(classes, gpus, batch_per_gpu, sharded)), sampled])
    return table(f"Per-GPU bytes, {dim}-d float32, {gpus} GPUs x {batch_per_gpu} images", header,
                 rows)


# --------------------------------------------------------------------------- the CPU check
def measured_bytes(criterion, optimizers) -> dict[str, int]:
    """Bytes the criterion's parameters, their gradients and their optimizer state occupy."""
    own = {id(p) for p in criterion.parameters()}
    out = {"parameters": 0, "gradients": 0, "optimizer state": 0}
    for p in criterion.parameters():
        out["parameters"] += p.numel() * p.element_size()
        if p.grad is not None:
            out["gradients"] += p.grad.numel() * p.grad.element_size()
    for opt in optimizers.values():
        for p, state in opt.state.items():
            if id(p) in own:
                out["optimizer state"] += sum(v.numel() * v.element_size() for v in state.values()
                                              if hasattr(v, "numel") and v.ndim > 0)
    return out


def formula_bytes(classes: int, dim: int, rows: int) -> dict[str, int]:
    """:func:`state_bytes` grouped as :func:`measured_bytes` counts."""
    parts = state_bytes(classes, dim, rows=rows)
    return {"parameters": parts["classifier"] + parts["centres"],
            "gradients": parts["classifier grad"] + parts["centres grad"],
            "optimizer state": parts["SGD momentum"]}


def one_step(classes: int, dim: int, batch: int):
    """The sharded softmax + center criterion (its world: this process's), its optimizers
    (the project's: SGD momentum for the classifier, plain SGD for the centres), one step."""
    import torch

    from faceignite.losses import PartialFC
    from faceignite.optim import build_optimizers

    criterion = PartialFC(classes, dim, "softmax")
    optimizers = build_optimizers(torch.nn.Linear(dim, dim), criterion, "sgd", 0.1, 0.9, 5e-4,
                                  0.5)
    embeddings = torch.randn(batch, dim, requires_grad=True)
    out = criterion(embeddings, torch.randint(0, classes, (batch,)))
    out["loss"].backward()
    criterion.before_optimizer_step()
    for opt in optimizers.values():
        opt.step()
    return criterion, optimizers


def _check_worker(local_rank: int, classes: int, dim: int, out_dir: str) -> None:
    import ignite.distributed as idist
    import torch

    torch.set_num_threads(1)
    criterion, optimizers = one_step(classes, dim, 8)
    torch.save({"rows": criterion.num_local, "measured": measured_bytes(criterion, optimizers)},
               os.path.join(out_dir, f"rank{idist.get_rank()}.pt"))


def check_table(classes: int, dim: int, processes: int) -> str:
    """Measured vs formula bytes: one plain process (all rows) and ``processes`` gloo ones."""
    import ignite.distributed as idist
    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = []
    criterion, optimizers = one_step(classes, dim, 8)  # no process group: world size 1
    got, want = measured_bytes(criterion, optimizers), formula_bytes(classes, dim, classes)
    rows.append(["1 process, all rows", f"{classes:,}", *_pairs(got, want)])
    with tempfile.TemporaryDirectory() as tmp:
        with idist.Parallel(backend="gloo", nproc_per_node=processes, master_port=port) as par:
            par.run(_check_worker, classes, dim, tmp)
        for rank in range(processes):
            result = torch.load(os.path.join(tmp, f"rank{rank}.pt"), weights_only=True)
            want = formula_bytes(classes, dim, result["rows"])
            rows.append([f"{processes} gloo processes, rank {rank}", f"{result['rows']:,}",
                         *_pairs(result["measured"], want)])
    header = ["", "rows", *(f"{k}: measured / formula" for k in ("parameters", "gradients",
                                                                  "optimizer state")), "equal"]
    return table(f"Check on the CPU: {classes:,} classes, {dim}-d, one step", header, rows)


def _pairs(got: dict[str, int], want: dict[str, int]) -> list[str]:
    cells = [f"{got[k]:,} / {want[k]:,}" for k in ("parameters", "gradients", "optimizer state")]
    return cells + ["yes" if got == want else "**no**"]


def main(argv=None) -> None:
    args = parse(argv)
    print_header("partial_fc_memory", args)
    print(memory_table(args.dim, args.gpus, args.batch_per_gpu, args.sample_rate), flush=True)
    if args.check_classes > 0:
        print(check_table(args.check_classes, args.dim, args.check_processes), flush=True)


if __name__ == "__main__":
    main()
