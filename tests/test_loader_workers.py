"""Persistent DataLoader workers are stopped when a run ends, not left to the interpreter's exit
(where PyTorch joins each pinned worker with a 5 s timeout: 30-60 s seen on an H200)."""
from __future__ import annotations

import multiprocessing

from faceignite.data.workers import stop_loader_workers


def test_a_run_leaves_no_loader_worker_alive(tmp_path):
    from handlers.training import main

    main(["--model", "tiny", "--image_size", "32", "--epochs", "1", "--batch_size", "32",
          "--num_workers", "2", "--clearml", "off", "--device", "cpu",
          "--output_dir", str(tmp_path)], handle_signals=False)
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
