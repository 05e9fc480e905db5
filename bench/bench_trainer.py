"""Trainer overhead: the project's Ignite step against a plain PyTorch loop doing the same work.

    python bench/bench_trainer.py                        # resnet34, 64 images at 112 px, batch 32

All candidates train the same model, criterion (softmax + center loss) and optimizers on the same
pre-collated batches held in memory (so the data loader is out of the picture): the plain loop
(baseline), :func:`faceignite.engine.create_trainer` alone, and with the handlers the recipe
attaches (LR schedule, progress bar and per-epoch statistics).  Target: ratio >= 0.97.
A second table isolates the engine's own cost per iteration with a step that does no work.
"""
from __future__ import annotations

import argparse

from common import (CLOCKS, Result, add_clock_arg, add_rounds_arg, add_threads_arg, interleaved,
                    print_header, rate_table, set_threads, unit)


def parse(argv=None) -> argparse.Namespace:
    from faceignite.models import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet34", choices=ARCHITECTURES)
    p.add_argument("--images", type=int, default=64, help="Images per timed pass (default: 64)")
    p.add_argument("--image_size", type=int, default=112, help="Input size (default: 112)")
    p.add_argument("--batch_size", type=int, default=32, help="Batch size (default: 32)")
    p.add_argument("--classes", type=int, default=500, help="Identities (default: 500)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--overhead_iterations", type=int, default=2000,
                   help="Iterations of the empty-step table (default: 2000; 0 skips it)")
    add_rounds_arg(p, 7)
    add_threads_arg(p)
    add_clock_arg(p)
    return p.parse_args(argv)


def overhead_candidates(iterations: int) -> dict:
    """A step that does no work but returns what ours returns, looped three ways."""
    import torch
    from ignite.engine import Engine

    from faceignite.config import parse_args
    from handlers import lr_scheduler, progress

    output = {"loss": torch.tensor(4.0), "ce": torch.tensor(3.9), "center": torch.tensor(9.0),
              "accuracy": torch.tensor(0.1), "batch_size": 32, "skipped": 0}
    data = [None] * iterations

    def step(engine, batch) -> dict:
        return output

    def plain() -> int:
        for batch in data:
            step(None, batch)
        return iterations

    bare, full = Engine(step), Engine(step)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    lr_scheduler.attach(full, opt, 0.01, 1000, max(iterations, 2),
                        **lr_scheduler.schedule_options(parse_args([])))
    progress.attach(full, {"model": opt})

    def engine(e: Engine) -> int:
        e.run(data, max_epochs=1)
        return iterations

    return {"python loop calling the step (baseline)": plain,
            "ignite Engine.run": lambda: engine(bare),
            "Engine.run + recipe handlers": lambda: engine(full)}


def main(argv=None) -> list[Result]:
    args = parse(argv)
    import torch

    from faceignite.engine import create_trainer
    from faceignite.runtime import Runtime
    from faceignite.losses import SoftmaxCenterLoss
    from faceignite.models import build_model
    from faceignite.optim import build_optimizers
    from faceignite.config import parse_args
    from handlers import lr_scheduler, progress

    print_header("bench_trainer", args)
    set_threads(args.threads)
    torch.manual_seed(0)
    runtime = Runtime.create(args.device, args.amp, args.channels_last)
    device = runtime.device
    if args.clock == "cpu" and device.type == "cuda":
        raise SystemExit("--clock cpu measures CPU work: use it with --device cpu")
    model = runtime.prepare_model(build_model(args.model, 128))  # once, as the standard run does
    criterion = SoftmaxCenterLoss(args.classes, 128, 0.01).to(device)
    optimizers = build_optimizers(model, criterion, "sgd", 0.01, 0.9, 5e-4, 0.5)
    steps = max(1, args.images // args.batch_size)
    pin = device.type == "cuda"
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size),
                torch.randint(0, args.classes, (args.batch_size,)), 0) for _ in range(steps)]
    if pin:
        batches = [(x.pin_memory(), y.pin_memory(), s) for x, y, s in batches]
    images_per_pass = steps * args.batch_size
    scaler = runtime.grad_scaler()

    def plain_loop() -> int:
        """What one writes without Ignite: the same step, statement for statement."""
        model.train()
        criterion.train()
        for images, labels, _ in batches:
            images = runtime.prepare(images)
            labels = labels.to(device, non_blocking=True)
            with runtime.autocast():
                out = criterion(model(images), labels)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            criterion.before_optimizer_step()
            for opt in optimizers.values():
                scaler.step(opt)
            scaler.update()
            (out["logits"].detach().argmax(1) == labels).float().mean()
        return images_per_pass

    bare = create_trainer(model, criterion, optimizers, runtime)
    full = create_trainer(model, criterion, optimizers, runtime)
    lr_scheduler.attach(full, optimizers["model"], 0.01, 1000, max(steps, 2),
                        **lr_scheduler.schedule_options(parse_args([])))
    progress.attach(full, optimizers)

    def ignite(trainer) -> int:
        trainer.run(batches, max_epochs=1)
        return images_per_pass

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    results = interleaved({"plain PyTorch loop (baseline)": plain_loop,
                           "faceignite create_trainer": lambda: ignite(bare),
                           "create_trainer + recipe handlers": lambda: ignite(full)},
                          args.rounds, sync=sync, clock=CLOCKS[args.clock])
    title = (f"Training step, {args.model} at {args.image_size} px, batch {args.batch_size}, "
             f"{steps} steps per pass, {device.type}, amp {args.amp}")
    print(rate_table(title, results, unit=unit(args.clock)), flush=True)
    if args.overhead_iterations > 0:
        empty = interleaved(overhead_candidates(args.overhead_iterations), args.rounds,
                            clock=CLOCKS[args.clock])
        for res in empty:
            res.extra["µs per iteration"] = f"{1e6 / res.median:.1f}"
        print(rate_table(f"Engine overhead alone: an empty step, {args.overhead_iterations} "
                         f"iterations per pass", empty,
                         unit="iterations/s" if args.clock == "wall" else "iterations/CPU-s",
                         extra_columns=["µs per iteration"]), flush=True)
        results += empty
    return results


if __name__ == "__main__":
    main()
