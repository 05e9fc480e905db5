"""GPU training speed: precision x memory format x torch.compile, against the original's plain loop.

    python bench/bench_gpu.py                            # resnet34, batch 256, 224 and 112 px
    python bench/bench_gpu.py --sizes 112 --compile off  # a quicker look

Prints "no CUDA device: skipped" and exits 0 where CUDA is not available.  For each input size,
the baseline is the original trainer's loop: fp32, NCHW, ``cudnn.benchmark`` off, batches copied
from pageable memory, ``loss.item()`` every step.  The candidates run the project's step
(:func:`faceignite.engine.create_trainer`, ``cudnn.benchmark`` on as ``faceignite.run`` sets it,
pinned batches copied with ``non_blocking``) in fp32 / AMP bf16 / AMP fp16, NCHW / channels_last,
eager / ``torch.compile``; one more row adds the recipe's handlers (LR schedule, progress bar,
epoch statistics).  Every candidate trains its own model (softmax + center loss over
``--classes`` identities) on the same in-memory batches, so the loader is out of the picture
(see bench_input.py for what the workers deliver).  Peak memory = the candidate's weights,
optimizer state and centres + the most its steps allocated on top.  Target: >= 2.5x at batch 256.
"""
from __future__ import annotations

import argparse
import gc
import time
from typing import Callable

from common import Result, add_rounds_arg, fmt, interleaved, print_header, rate_table

PRECISIONS = ("fp32", "bf16", "fp16")


def parse(argv=None) -> argparse.Namespace:
    from faceignite.models import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet34", choices=ARCHITECTURES)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 112],
                   help="Input sizes, one table each (default: 224 112)")
    p.add_argument("--batch_size", type=int, default=256, help="Batch size (default: 256)")
    p.add_argument("--steps", type=int, default=20, help="Timed steps per round (default: 20)")
    p.add_argument("--warmup", type=int, default=5,
                   help="Untimed steps first (cudnn autotuning, compilation) (default: 5)")
    p.add_argument("--classes", type=int, default=9000, help="Identities (default: 9000)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--channels_last", default="both", choices=("off", "on", "both"),
                   help="Memory formats to try (default: both)")
    p.add_argument("--compile", default="both", choices=("off", "on", "both"),
                   help="torch.compile variants (default: both)")
    p.add_argument("--compile_layouts", nargs="+", default=["channels_last"],
                   choices=("nchw", "channels_last"),
                   help="Memory formats that also get a compiled variant, to bound compile "
                        "time (default: channels_last)")
    p.add_argument("--no_handlers_row", action="store_true",
                   help="Skip the row with the recipe's handlers attached")
    p.add_argument("--flops", action="store_true",
                   help="Count forward+backward FLOPs per image (torch.utils.flop_counter, model "
                        "and loss as run) and add TFLOP/s and %% of --peak_tflops columns")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="The device's dense bf16 peak in TFLOP/s (default: 989 on an H100/H200, "
                        "else no %% column)")
    p.add_argument("--embedding_dim", type=int, default=None,
                   help="Embedding size (default: the architecture's, 512 for the iResNets)")
    p.add_argument("--device", default="cuda",
                   help="cuda (default); 'cpu' only dry-runs this script with tiny sizes")
    add_rounds_arg(p, 3)
    return p.parse_args(argv)


def configure_dynamo() -> None:
    """Every candidate is its own model instance: let dynamo keep a graph for each."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))


def resident_bytes(modules, optimizers) -> int:
    """Bytes of weights, buffers and optimizer state (each tensor once)."""
    import torch

    tensors = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            tensors[id(t)] = t
    for opt in optimizers.values():
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    tensors[id(v)] = v
    return sum(t.numel() * t.element_size() for t in tensors.values())


class Candidate:
    """One configuration: its own model, criterion and optimizers, and a pass over the batches.

    A failure (out of memory, a compiler error) is recorded and the candidate then returns 0
    images, so one bad configuration never stops the table.
    """

    def __init__(self, name: str, build: Callable[[], tuple], device):
        self.name, self.device = name, device
        self.error = ""
        self.peak = 0
        self.warmup_s = float("nan")
        self.loss = float("nan")
        self.run_pass, self.read_loss, self.resident = None, None, 0
        self.resident_fn: Callable[[], int] = lambda: 0
        try:
            self.run_pass, self.read_loss, self.resident_fn = build()
        except Exception as exc:  # noqa: BLE001 — reported in the table
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        import torch

        first_line = str(exc).splitlines()[0][:80].replace("|", "/") if str(exc) else ""
        self.error = f"failed: {exc.__class__.__name__}: {first_line}"
        self.run_pass, self.read_loss = None, None  # let go of the model and its memory
        self.resident_fn = lambda: 0
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm(self, passes: Callable[[], int]) -> None:
        import torch

        if self.run_pass is None:
            return
        start = time.perf_counter()
        try:
            passes()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.resident = self.resident_fn()
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
        self.warmup_s = time.perf_counter() - start

    def __call__(self) -> int:
        import torch

        if self.run_pass is None:
            return 0
        try:
            if self.device.type == "cuda":
                base = torch.cuda.memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            images = self.run_pass()
            if self.device.type == "cuda":
                step_peak = torch.cuda.max_memory_allocated(self.device) - base
                self.peak = max(self.peak, self.resident + step_peak)
            return images
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
            return 0


def size_table(args: argparse.Namespace, size: int, device) -> list[Result]:
    import torch

    from faceignite.engine import create_trainer
    from faceignite.runtime import Runtime
    from faceignite.losses import SoftmaxCenterLoss
    from faceignite.models import build_model, spec
    from faceignite.optim import build_optimizers
    from faceignite.config import parse_args
    from handlers import lr_scheduler, progress

    cuda = device.type == "cuda"
    b, pool = args.batch_size, min(4, args.steps)
    gen = torch.Generator().manual_seed(0)
    pageable = [(torch.randn(b, 3, size, size, generator=gen),
                 torch.randint(0, args.classes, (b,), generator=gen)) for _ in range(pool)]
    pinned = [(x.pin_memory(), y.pin_memory()) if cuda else (x, y) for x, y in pageable]
    timed_pageable = [pageable[i % pool] for i in range(args.steps)]
    timed_pinned = [(*pinned[i % pool], 0) for i in range(args.steps)]
    warm_pinned = [(*pinned[i % pool], 0) for i in range(args.warmup)]
    images_per_pass = args.steps * b

    dim = args.embedding_dim or spec(args.model).embedding_dim

    def parts():
        torch.manual_seed(0)
        model = build_model(args.model, dim).to(device)
        criterion = SoftmaxCenterLoss(args.classes, dim, 0.01).to(device)
        optimizers = build_optimizers(model, criterion, "sgd", 0.01, 0.9, 5e-4, 0.5)
        return model, criterion, optimizers

    def baseline():
        model, criterion, optimizers = parts()
        last = [float("nan")]

        def one_pass(batches=timed_pageable) -> int:
            torch.backends.cudnn.benchmark = False
            model.train()
            criterion.train()
            total = 0.0
            for images, labels in batches:
                images, labels = images.to(device), labels.to(device)  # pageable, blocking
                out = criterion(model(images), labels)
                for opt in optimizers.values():
                    opt.zero_grad()
                out["loss"].backward()
                criterion.before_optimizer_step()
                for opt in optimizers.values():
                    opt.step()
                total += out["loss"].item()  # the original read the loss at every step
            last[0] = total / max(len(batches), 1)
            return len(batches) * b

        return one_pass, lambda: last[0], lambda: resident_bytes((model, criterion), optimizers)

    def ours(precision: str, channels_last: bool, compiled: bool, handlers: bool = False):
        def build():
            model, criterion, optimizers = parts()
            runtime = Runtime(device, precision_amp(precision), channels_last, compiled)
            runtime.prepare_model(model)  # once, as the standard run does
            trainer = create_trainer(model, criterion, optimizers, runtime)
            if handlers:
                lr_scheduler.attach(trainer, optimizers["model"], 0.01, 1000, max(args.steps, 2),
                                    **lr_scheduler.schedule_options(parse_args([])))
                progress.attach(trainer, optimizers)

            def one_pass(batches=timed_pinned) -> int:
                torch.backends.cudnn.benchmark = True
                trainer.run(batches, max_epochs=1)
                return len(batches) * b

            return (one_pass, lambda: float(trainer.state.output["loss"]),
                    lambda: resident_bytes((model, criterion), optimizers))
        return build

    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    specs = [("plain fp32 loop, as the original trainer (baseline)", baseline)]
    for precision in args.precisions:
        for cl in layouts:
            layout = "channels_last" if cl else "nchw"
            for compiled in compiles:
                if compiled and layout not in args.compile_layouts:
                    continue
                name = (f"{precision}, {'channels_last' if cl else 'NCHW'}, "
                        f"{'torch.compile' if compiled else 'eager'}")
                specs.append((name, ours(precision, cl, compiled)))
    if not args.no_handlers_row:
        precision = "bf16" if "bf16" in args.precisions else args.precisions[0]
        specs.append((f"{precision}, {'channels_last' if True in layouts else 'NCHW'}, eager "
                      f"+ recipe handlers", ours(precision, True in layouts, False, True)))

    candidates: dict[str, Candidate] = {}
    for name, build in specs:
        cand = Candidate(name, build, device)
        print(f"  warming up: {name}", flush=True)
        if name.startswith("plain"):
            cand.warm(lambda c=cand: c.run_pass([pageable[i % pool] for i in range(args.warmup)]))
        else:
            cand.warm(lambda c=cand: c.run_pass(warm_pinned))
        candidates[name] = cand
    sync = torch.cuda.synchronize if cuda else None
    results = interleaved(candidates, args.rounds, warmup=0, sync=sync)
    for res in results:
        cand = candidates[res.name]
        if cand.read_loss and not cand.error:
            cand.loss = cand.read_loss()
        res.extra["peak memory GiB"] = fmt(cand.peak / 2**30, 2) if cand.peak else "-"
        res.extra["warm-up s"] = fmt(cand.warmup_s, 1)
        res.extra["last loss"] = cand.error or f"{cand.loss:.3f}"
    extra = ["peak memory GiB", "warm-up s", "last loss"]
    if args.flops:
        per_image = flops_per_image(parts, size, device)
        peak = args.peak_tflops or default_peak_tflops(device)
        for res in results:
            tflops = res.median * per_image / 1e12 if res.median == res.median else float("nan")
            res.extra["TFLOP/s"] = fmt(tflops, 1)
            res.extra["% of bf16 peak"] = fmt(100 * tflops / peak, 1) if peak else "-"
        extra += ["TFLOP/s", "% of bf16 peak"]
        print(f"{args.model} at {size} px: {per_image / 1e9:.3g} GFLOP per image, forward + "
              f"backward of model and loss (torch.utils.flop_counter); bf16 peak taken as "
              f"{peak or 'unknown'} TFLOP/s", flush=True)
    print(rate_table(f"{args.model}, {size} px, batch {b}, {args.steps} steps x {args.rounds} "
                     f"rounds ({device_name(device)})", results,
                     extra_columns=extra), flush=True)
    best = max(results[1:], key=lambda r: r.ratio if r.ratio == r.ratio else 0, default=None)
    if best is not None:
        print(f"best at {size} px: {best.name}, {best.ratio:.2f}x the baseline "
              f"(target >= 2.5x)\n", flush=True)
    candidates.clear()
    gc.collect()
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
    return results


def flops_per_image(parts: Callable[[], tuple], size: int, device, batch: int = 8) -> float:
    """Forward + backward FLOPs of one image through the model and the loss, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on a batch of ``batch`` (a multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model, criterion, _ = parts()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, criterion.classifier.out_features, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        criterion(model(images), labels)["loss"].backward()
    return counter.get_total_flops() / batch


def default_peak_tflops(device) -> float | None:
    """Dense bf16 tensor-core peak of the devices we know (TFLOP/s), else None."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return 989.4 if ("H100" in name or "H200" in name) else 312.0 if "A100" in name else None


def precision_amp(precision: str) -> str:
    return "off" if precision == "fp32" else precision


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"


def main(argv=None) -> list[Result]:
    args = parse(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return []
    print_header("bench_gpu", args)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}, TF32 convolutions "
              f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's default, all rows)\n",
              flush=True)
    configure_dynamo()
    results: list[Result] = []
    for size in args.sizes:
        results += size_table(args, size, device)
    return results


if __name__ == "__main__":
    main()
