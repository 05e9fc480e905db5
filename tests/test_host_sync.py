"""No host read between agreement points (issue 19): the standard recipe's handlers read tensors
back (``item``, ``bool``, ``tolist``, ``float``, ``int``, ``numpy``) only every
``--log_interval``/``--save_interval`` iteration and at epoch ends; a NaN between two points is
found at the next one, before anything newer is saved.  Real CPU runs of the resnet34 recipe at
32 px on 24 real JPEGs (8 iterations of batch 2); the tensor methods are wrapped to count, not
to change anything.  Also: a library call does not take over SIGTERM.
"""
import collections
import re
import signal

import pytest
import torch
from ignite.engine import Events

from conftest import copy_subset, nan_loss_from
from faceignite.checkpoint import load_checkpoint
from handlers.training import main

READS = ("item", "__bool__", "tolist", "__float__", "__int__", "numpy")
ITERATIONS = 8  # 4 identities x 6 images, 8 held out, batch 2


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, synthetic_root):
    return copy_subset(synthetic_root[0], tmp_path_factory.mktemp("tiny"), identities=4, images=6)


def args(root, out, *extra):
    return ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "2", "--epochs", "1", "--valid_split", "0.25", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--log_interval", "3", *extra]


class ReadCounter:
    """Counts tensor reads made by the trainer's handlers (not in the step, not in loading),
    per iteration, and what ``signal.getsignal(SIGTERM)`` was during the run."""

    def __init__(self):
        self.reads = collections.Counter()
        self.sigterm = set()
        self.counting = False
        self.trainer = None

    def hook(self, trainer, _state):
        self.trainer = trainer
        step = trainer._process_function

        def counted_step(engine, batch):
            self.counting = False
            try:
                return step(engine, batch)
            finally:
                self.counting = True

        trainer._process_function = counted_step
        loading, loaded = Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED
        trainer.add_event_handler(loading, lambda _: setattr(self, "counting", False))
        trainer.add_event_handler(loaded, lambda _: setattr(self, "counting", True))
        trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                  lambda _: self.sigterm.add(signal.getsignal(signal.SIGTERM)))

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, self._wrap(name, method))
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)

    def _from_the_loader(self, tensor) -> bool:
        """The loader's batch never leaves the host (the step copies it to the device): reading
        it, e.g. the first epoch's label check, is no device read."""
        batch = self.trainer.state.batch
        if not isinstance(batch, (tuple, list)):
            return False
        ptr = tensor.untyped_storage().data_ptr()
        return any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == ptr
                   for t in batch)

    def _wrap(self, name, method):
        def counted(tensor, *a, **kw):
            if (self.counting and self.trainer is not None
                    and not self._from_the_loader(tensor)):
                self.reads[self.trainer.state.iteration] += 1
            return method(tensor, *a, **kw)
        counted.__name__ = name
        return counted


def test_handlers_read_nothing_between_log_intervals(tiny_root, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    counter = ReadCounter()
    with counter:
        main(args(tiny_root, tmp_path / "runs"), hooks=[counter.hook], handle_signals=False)
    points = {i for i in range(1, ITERATIONS + 1) if i % 3 == 0} | {ITERATIONS}
    assert counter.trainer.state.iteration == ITERATIONS
    assert set(counter.reads) <= points, dict(counter.reads)  # nothing between two points
    assert set(counter.reads) == points, dict(counter.reads)  # the counter does see reads
    # a library call leaves the process's SIGTERM handler alone, during the run and after
    assert counter.sigterm == {before} and signal.getsignal(signal.SIGTERM) is before


def test_nan_between_points_stops_at_the_next_with_nothing_newer_saved(tiny_root, tmp_path):
    counter = ReadCounter()
    factory = nan_loss_from(5)  # the real criterion, NaN from its 5th call (iteration 5) on
    with counter, pytest.raises(SystemExit) as stopped:  # agreement points: multiples of 2
        main(args(tiny_root, tmp_path / "runs", "--save_interval", "2", "--n_saved", "9"),
             criterion_factory=factory, hooks=[counter.hook])  # (--save_interval), 3 (--log_)
    assert stopped.value.code == 3  # a NaN stop is never a success
    assert counter.trainer.state.iteration == 6  # NaN at 5, read at 6
    assert set(counter.reads) <= {2, 3, 4, 6}, dict(counter.reads)
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    saved = sorted(int(re.search(r"_(\d+)\.pt", p.name).group(1))
                   for p in run_dir.glob("*checkpoint_*.pt"))
    assert saved == [2, 4]  # the good ones; none at 6 nor at a COMPLETED
    ckpt = load_checkpoint(str(run_dir))
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())
    log = (run_dir / "run.log").read_text()
    assert "ce=nan" in log and "at or before epoch 1 iteration 6 (after iteration 4" in log
    # the command line's default: the run's own SIGTERM handler while it trains
    assert len(counter.sigterm) == 1 and counter.sigterm != {signal.getsignal(signal.SIGTERM)}
