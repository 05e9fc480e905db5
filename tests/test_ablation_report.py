"""The real-face ablation's bookkeeping (``bench/ablation_table.py``, ``bench/real_data_lfw.py``):
runs of different backbones, training sets and identity counts are kept apart in the table and in
the paired differences, and ``--budget`` anneals the LR by a cosine in wall-clock time, so every
backbone ends its CPU budget at LR ≈ 0."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine

from ablation_table import append_result, paired_differences, read_results, run_key, summarize
from real_data_lfw import RunProbe


def row(variant: str, seed: int, acc: float, **context) -> dict:
    return {"variant": variant, "seed": seed, "train_ids": context.pop("train_ids", 60),
            "image_size": context.pop("image_size", 32), "norm_accuracy": acc,
            "ratio_norm": 0.7, **context}


def test_older_result_lines_count_as_resnet34_on_the_box_crops():
    old = row("softmax", 0, 0.7)
    new = row("softmax", 0, 0.7, model="resnet34", train_set="aligned-160")
    assert run_key(old) == run_key(new)
    assert run_key(row("softmax", 0, 0.7, model="mobilefacenet")) != run_key(old)
    assert run_key(row("softmax", 0, 0.7, train_ids=30)) != run_key(old)


def test_table_and_differences_keep_backbones_and_identity_counts_apart():
    rows = [row("softmax", 0, 0.70), row("softmax", 1, 0.72),
            row("center_w0.003", 0, 0.71), row("center_w0.003", 1, 0.75),
            row("softmax", 0, 0.60, train_ids=30), row("center_w0.003", 0, 0.50, train_ids=30),
            row("center_w0.003", 0, 0.80, model="mobilefacenet", train_set="fp112")]
    table = summarize(rows, columns=["norm_accuracy"])
    lines = table.splitlines()
    assert lines[0] == "| run | seeds | LFW acc % |"
    # the label names what differs between the runs (backbone, training set, identities)
    assert "| resnet34 · aligned-160 · 60 ids · softmax | 0,1 | 71.0 ± 1.4 |" in lines
    assert "| resnet34 · aligned-160 · 60 ids · center_w0.003 | 0,1 | 73.0 ± 2.8 |" in lines
    assert "| resnet34 · aligned-160 · 30 ids · softmax | 0 | 60.0 ± 0.0 |" in lines
    assert "| mobilefacenet · fp112 · 60 ids · center_w0.003 | 0 | 80.0 ± 0.0 |" in lines
    diffs = paired_differences(rows, keys=("norm_accuracy",)).splitlines()
    # 60 ids: (+1, +3) points; 30 ids: −10; no softmax run for MobileFaceNet: no line
    assert diffs == [
        "resnet34 · aligned-160 · 60 ids · center_w0.003 − softmax (seeds 0,1): norm_accuracy +2 ± 1.4",
        "resnet34 · aligned-160 · 30 ids · center_w0.003 − softmax (seeds 0): norm_accuracy -10 ± 0"]
    # against a backbone: the same variant, seed and identity count of resnet34 on aligned-160
    assert paired_differences(rows, keys=("norm_accuracy",), against=("resnet34", "aligned-160")) == (
        "mobilefacenet · fp112 · 60 ids · center_w0.003 − resnet34 · aligned-160 · 60 ids · "
        "center_w0.003 (seeds 0): norm_accuracy +9 ± 0")


def test_budget_anneals_the_lr_by_a_cosine_in_wall_clock_time():
    now = [0.0]
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []

    def step(engine, batch):
        seen.append(optimizer.param_groups[0]["lr"])
        now[0] += 25.0  # each step takes 25 s of a 100 s budget

    trainer = Engine(step)
    probe = RunProbe(budget_s=100.0, clock=lambda: now[0])
    probe(trainer, SimpleNamespace(model=model, criterion=None, optimizers={"model": optimizer}))
    trainer.run(range(3), max_epochs=2)
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, t / 100))) for t in (0, 25, 50, 75, 100, 125)]
    assert seen == pytest.approx(expected)
    assert seen[-1] == 0.0  # past the budget the LR stays at the end of the cosine
    assert (probe.iterations, probe.epochs, probe.ended - probe.started) == (6, 2.0, 150.0)


def test_a_results_line_cut_short_is_skipped_and_the_next_run_gets_its_own_line(tmp_path, capsys):
    results = tmp_path / "ablation.jsonl"
    append_result(results, row("softmax", 0, 0.70))
    with open(results, "a") as f:  # a run killed while writing its line
        f.write('{"variant": "center_w0.003", "seed": 0, "norm_acc')
    assert [r["variant"] for r in read_results(results)] == ["softmax"]
    assert f"{results} line 2: not a JSON object" in capsys.readouterr().err
    append_result(results, row("center_w0.003", 0, 0.71))  # the resumed run
    assert [(r["variant"], r["norm_accuracy"]) for r in read_results(results)] == [
        ("softmax", 0.70), ("center_w0.003", 0.71)]
    assert read_results(tmp_path / "none.jsonl") == []

