"""Each bench script runs end to end at tiny sizes and prints its table with ratios.

No timing asserts: the benches only measure.  All four run in one child process (one import of
torch for all; their thread settings stay out of the test process).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import cv2
import pytest
import torch

import zygote

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"\|\s*\d+\.\d\dx\s*\|")
RUNS = {
    "bench_trainer": ["--model", "tiny", "--image_size", "32", "--batch_size", "4", "--images", "4", "--classes", "10",
                      "--rounds", "1", "--threads", "1", "--device", "cpu",
                      "--overhead_iterations", "50"],
    "bench_input": ["--images", "8", "--source_size", "48", "--image_size", "32",
                    "--batch_size", "4", "--rounds", "1"],
    "bench_index": ["--identities", "20", "--images_each", "5", "--rounds", "1"],
    "bench_gpu": [],
}
DRIVER = """
import importlib
for name, argv in {runs!r}.items():
    print("@@@ " + name, flush=True)
    importlib.import_module(name).main(argv)
"""


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Each bench's stdout, by name."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",  # the benches and this checkout
           "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), str(REPO)])}
    runs = {k: v for k, v in RUNS.items() if k != "bench_gpu" or not torch.cuda.is_available()}
    proc = zygote.run([sys.executable, "-c", DRIVER.format(runs=runs)],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = proc.stdout.split("@@@ ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] for p in parts}


def assert_table(out: str, baseline: str, rows: int) -> None:
    """Markdown tables with a ratio column: ``rows`` rows in all, the baseline at 1.00x."""
    assert "ratio vs" in out
    ratio_rows = [line for line in out.splitlines() if RATIO.search(line)]
    assert len(ratio_rows) == rows, out
    assert any(baseline in line and "| 1.00x |" in line for line in ratio_rows), out


def test_bench_trainer_prints_ratio_table(outputs):
    out = outputs["bench_trainer"]
    assert_table(out, "plain PyTorch loop (baseline)", 6)
    assert "| faceignite create_trainer |" in out and "`python bench/bench_trainer.py " in out
    assert "| ignite Engine.run |" in out and "µs per iteration" in out


def test_bench_input_prints_decoder_and_pipeline_tables(outputs):
    out = outputs["bench_input"]
    assert "### Decode only" in out and "### Decode + augment" in out
    decoders = 4 if hasattr(cv2, "IMREAD_COLOR_RGB") else 3
    assert_table(out, "PIL Image.open + convert (baseline)", decoders + 3)
    assert "| faceignite loader: OpenCV + albumentations |" in out


def test_bench_index_prints_scan_and_restart(outputs):
    out = outputs["bench_index"]
    assert_table(out, "torchvision ImageFolder (baseline)", 3)
    assert "faceignite cached re-start" in out and "wrote 100 files" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU machine: run bench/bench_gpu.py itself")
def test_bench_gpu_skips_without_cuda(outputs):
    assert outputs["bench_gpu"].strip() == "no CUDA device: skipped"
