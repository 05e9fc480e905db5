"""No host sync inside the step (issue 19): train the standard recipe a few iterations on the
built-in data with every handler attached, under ``torch.cuda.set_sync_debug_mode("error")``
from the end of each batch fetch to the end of that iteration's handlers — except at the
agreement points (``--log_interval`` multiples, epoch ends), where one read is the design, and
the first iteration (cuDNN autotuning).  Prints "no host sync inside the step" or the traceback.

    python bench/sync_check.py --device cuda [--amp bf16]      # exit 0: none; 1: a sync
Without a CUDA device it prints "no CUDA device: skipped" and exits 0.  (``--amp fp16`` syncs
in ``GradScaler.step`` by design: it reads the inf check once per step.)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import traceback


import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402

from handlers.training import main  # noqa: E402

LOG_INTERVAL = 5


def guard(trainer, _state) -> None:
    """Error mode between agreement points (a hook of :func:`handlers.training.main`)."""
    def mode(name: str) -> None:
        torch.cuda.set_sync_debug_mode(name)

    step = trainer._process_function

    def step_then_open_point(engine, batch):
        out = step(engine, batch)
        it = engine.state.iteration
        if it % LOG_INTERVAL == 0 or it % engine.state.epoch_length == 0:
            mode("default")  # this iteration's handlers hold the agreement point: one read
        return out

    trainer._process_function = step_then_open_point
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: mode("default"))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED,
                              lambda e: mode("error" if e.state.iteration > 0 else "default"))
    trainer.add_event_handler(Events.EPOCH_COMPLETED | Events.TERMINATE | Events.COMPLETED,
                              lambda _: mode("default"))


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    args = p.parse_args()
    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print("no CUDA device: skipped")
        return 0
    with tempfile.TemporaryDirectory() as out:
        argv = ["--device", args.device, "--amp", args.amp, "--epochs", "1", "--image_size", "64",
                "--batch_size", "64", "--log_interval", str(LOG_INTERVAL), "--num_workers", "2",
                "--clearml", "off", "--output_dir", out]
        try:
            main(argv, hooks=[guard], handle_signals=False)
        except RuntimeError:
            torch.cuda.set_sync_debug_mode("default")
            traceback.print_exc()
            print("host sync inside the step (between agreement points): see the traceback")
            return 1
    print(f"no host sync inside the step (--amp {args.amp}; reads every {LOG_INTERVAL} "
          "iterations and at the epoch end only)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
