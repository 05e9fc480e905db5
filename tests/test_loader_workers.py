"""Persistent DataLoader workers are stopped when a run ends, not left to the interpreter's exit
(where PyTorch joins each pinned worker with a 5 s timeout: 30-60 s seen on an H200)."""
from __future__ import annotations

import importlib
import multiprocessing

import pytest

from faceignite.config import parse_args
from faceignite.data.workers import stop_loader_workers


@pytest.mark.parametrize("composition", ["handlers.training", "experiments.custom_example"])
def test_a_run_leaves_no_loader_worker_alive(tmp_path, composition):
    """The standard run and the template, called as one process of a run (a rank that
    ``--nproc_per_node`` spawned, no command-line wrapper around it): the run control stops
    the workers when ``control.run`` returns."""
    training = importlib.import_module(composition).training
    cfg = parse_args(["--model", "tiny", "--image_size", "32", "--epochs", "1",
                      "--batch_size", "32", "--num_workers", "2", "--clearml", "off",
                      "--device", "cpu", "--output_dir", str(tmp_path)])
    training(0, cfg, result={})
    assert multiprocessing.active_children() == []  # train, held-out and pairs loaders: stopped


def test_stop_loader_workers_stops_a_persistent_loader():
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(torch.arange(8), batch_size=4, num_workers=2, persistent_workers=True)
    assert [len(b) for b in loader] == [4, 4]
    assert len(multiprocessing.active_children()) == 2  # persistent: alive after the epoch
    assert stop_loader_workers() == 1
    assert multiprocessing.active_children() == []
    assert [len(b) for b in loader] == [4, 4]  # the loader still works: new workers start
    stop_loader_workers()
