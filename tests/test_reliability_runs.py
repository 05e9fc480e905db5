"""Issue 18, the training run itself, on real files and real processes: batches of one and
empty batches, two runs started at once, a NaN stop's exit code, a refused resume that leaves
the run untouched, the options refused before training, and impossible or full output folders."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader

import zygote
from conftest import REPO, START_METHOD, copy_subset, one_error, shared_path
from faceignite.data import FaceImageDataset, collate_skip_bad
from faceignite.data.transforms import eval_transform, train_transform
from faceignite.engine import create_evaluator, create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.run import setup_logging
from handlers.training import main

SIZE = 32
PYTHON = sys.executable


def faces(dest: Path, identities: int, images: int) -> Path:
    return copy_subset(shared_path("celeba_subset", "aligned-160"), dest, identities, images)


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", str(SIZE),
            "--batch_size", "4", "--epochs", "1", "--valid_split", "0", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--log_interval", "0", *extra]


def spoil(path: Path) -> None:
    path.write_bytes(b"not a picture")


# ------------------------------------------------------------ item 1: a training batch of one
def test_a_set_of_batch_size_plus_one_images_trains_without_a_batch_of_one(tmp_path):
    root = faces(tmp_path / "data", 2, 3)  # 6 images at --batch_size 5: batches of 5 and 1
    out = tmp_path / "runs"
    metrics = main(args(root, out, "--batch_size", "5", "--epochs", "2"))
    run_dir = next(out.glob("resnet34_center-*"))
    assert sorted(p.name for p in run_dir.glob("training_checkpoint_*.pt")) == \
        ["training_checkpoint_1.pt", "training_checkpoint_2.pt"]  # one step an epoch
    assert metrics["skipped_images"] == 0


def test_a_batch_cut_to_one_image_by_undecodable_files_is_skipped_and_counted(tmp_path):
    root = faces(tmp_path / "data", 2, 2)
    files = sorted(root.rglob("*.jpg"))
    spoil(files[0])
    dataset = FaceImageDataset([(str(f), i % 2) for i, f in enumerate(files)],
                               train_transform(SIZE))
    torch.manual_seed(0)
    model = build_model("tiny", 16)
    criterion = SoftmaxCenterLoss(2, 16, 0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = {"model": torch.optim.SGD(model.parameters(), lr=0.1),
                  "center": torch.optim.SGD(criterion.parameters(), lr=0.5)}
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: outputs.append(e.state.output))
    trainer.run([collate_skip_bad([dataset[0], dataset[1]])], max_epochs=1)  # [bad, good]
    assert [(o["batch_size"], o["skipped"]) for o in outputs] == [(0, 2)]
    # nothing trained on it: weights and BatchNorm statistics as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    trainer.run([collate_skip_bad([dataset[2], dataset[3]])], max_epochs=2)  # two good ones
    assert outputs[-1]["batch_size"] == 2 and outputs[-1]["skipped"] == 0
    stats = next(k for k in before if k.endswith("running_mean"))
    assert not torch.equal(model.state_dict()[stats], before[stats])  # a real step changes it


def test_a_training_set_of_one_image_is_one_line_before_training(tmp_path, caplog):
    root = faces(tmp_path / "data", 1, 1)
    with pytest.raises(SystemExit) as exc:
        main(args(root, tmp_path / "runs"))
    assert exc.value.code == 2
    assert one_error(caplog) == (f"error: {root} leaves 1 training image(s) after the held-out "
                                 f"split (--valid_split 0.0): BatchNorm needs at least 2; add "
                                 f"images or lower --valid_split")


# ------------------------------------------------------------ item 2: an empty held-out batch
def test_a_held_out_batch_with_no_decodable_image_is_left_out_of_the_metrics(tmp_path):
    root = faces(tmp_path / "data", 2, 3)
    files = sorted(root.rglob("*.jpg"))
    samples = [(str(f), i // 3) for i, f in enumerate(files)]
    spoil(files[0])
    spoil(files[1])  # the whole first batch of 2
    torch.manual_seed(0)
    model = build_model("tiny", 16).eval()
    criterion = SoftmaxCenterLoss(2, 16, 0.01)

    def evaluate(pairs):
        evaluator = create_evaluator(model, criterion, torch.device("cpu"),
                                     {"accuracy": Accuracy(), "loss": Loss(nn.CrossEntropyLoss())})
        loader = DataLoader(FaceImageDataset(pairs, eval_transform(SIZE)), batch_size=2,
                            collate_fn=collate_skip_bad)
        return evaluator.run(loader).metrics

    with_empty = evaluate(samples)
    only_good = evaluate(samples[2:])
    assert with_empty == pytest.approx(only_good) and 0 <= with_empty["accuracy"] <= 1


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name.startswith("resnet34_center-"))


def start(script: str, *argv: str) -> zygote.Popen:
    """A real training process (this checkout's code), its output kept."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_OFFLINE_MODE": "1"}
    return zygote.Popen([PYTHON, "-c", script, *argv], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ------------------------------------------------------------ item 3: two runs at once
AT_ONCE = """
import pathlib, sys, time
from handlers.training import main
ready = pathlib.Path(sys.argv[1])
(ready / sys.argv[2]).touch()  # imported
while not (ready / "go").exists():  # the test writes the start time once both are imported
    time.sleep(0.01)
time.sleep(max(0.0, float((ready / "go").read_text()) - time.time()))  # start together
main(sys.argv[3:])
"""


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    import time

    root = faces(tmp_path / "data", 2, 2)
    out = tmp_path / "runs"
    now = int(time.time())
    # the folders a third run made in each second of the next two minutes: never to be reused
    taken = [out / f"resnet34_center-tiny-{time.strftime('%Y%m%d-%H%M%S', time.localtime(t))}"
             for t in range(now, now + 120)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "mine.txt").write_text("the other run's")
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [start(AT_ONCE, str(ready), str(seed),
                   *args(root, out, "--batch_size", "2", "--seed", str(seed),
                         "--index_cache", str(tmp_path / f"index{seed}.json")))
             for seed in (1, 2)]
    deadline = time.monotonic() + 300
    while not all((ready / str(seed)).exists() for seed in (1, 2)):  # both imported
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    (ready / "go.tmp").write_text(str(int(time.time()) + 2 + 0.05))  # the start of one second
    os.replace(ready / "go.tmp", ready / "go")
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    for folder in taken:
        assert os.listdir(folder) == ["mine.txt"]  # untouched
    made = sorted(set(run_dirs(out)) - set(taken))
    assert len(made) == 2 and all(p.name[-2:] in ("-2", "-3") for p in made)
    for seed, log in zip((1, 2), logs):
        run_dir = next(p for p in made if f"output in {p}," in log)  # this process's folder
        assert '"seed": %d' % seed in (run_dir / "config.json").read_text()
        assert (run_dir / "run.log").read_text().count("output in ") == 1
        (ckpt,) = run_dir.glob("training_checkpoint_*.pt")
        assert torch.load(ckpt, weights_only=True)["config"]["seed"] == seed
    assert len({next(p for p in made if f"output in {p}," in log) for log in logs}) == 2


# ------------------------------------------------------------ item 5: a NaN stop's exit code
GOES_NAN = """
import sys
from faceignite.losses import SoftmaxCenterLoss
from handlers.training import main

class NanAfter(SoftmaxCenterLoss):  # the real criterion, NaN from its 4th call on (epoch 2)
    calls = 0
    def forward(self, embeddings, labels):
        out = super().forward(embeddings, labels)
        NanAfter.calls += 1
        if NanAfter.calls >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out

main(sys.argv[1:], criterion_factory=lambda cfg, n: NanAfter(n, cfg.embedding_dim, 0.01))
"""


def test_a_run_stopped_by_a_nan_loss_exits_3_keeping_the_last_good_checkpoint(tmp_path):
    root = faces(tmp_path / "data", 2, 3)  # 6 images, batch 2: 3 steps an epoch
    out = tmp_path / "runs"
    proc = start(GOES_NAN, *args(root, out, "--batch_size", "2", "--epochs", "3"))
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 3, log
    assert "Traceback" not in log
    (run_dir,) = run_dirs(out)
    nan_line = next(line for line in log.splitlines() if "loss went NaN" in line)
    # NaN from iteration 4, read at the next agreement point (the epoch end, 6)
    assert "at or before epoch 2 iteration 6 (after iteration 3" in nan_line and f"resume from {run_dir / 'training_checkpoint_3.pt'}" \
        in nan_line
    assert [p.name for p in run_dir.glob("training_checkpoint_*.pt")] == \
        ["training_checkpoint_3.pt"]
    ckpt = torch.load(run_dir / "training_checkpoint_3.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())


# ------------------------------------------------------------ item 6: a refused resume
def test_a_refused_resume_leaves_the_runs_config_and_log_byte_identical(tmp_path, caplog):
    root = faces(tmp_path / "data", 2, 3)
    out = tmp_path / "runs"
    main(args(root, out, "--batch_size", "2"))
    (run_dir,) = run_dirs(out)
    ckpt = run_dir / "training_checkpoint_3.pt"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    added = root / sorted(os.listdir(root))[0] / "zz_added.jpg"
    refusals = [(["--epochs", "1"], "has already trained 1 epochs", None),
                (["--epochs", "2"], "the training folder changed since it was saved", added)]
    for extra, expected, new_file in refusals:
        if new_file is not None:
            shutil.copy(next(root.rglob("*.jpg")), new_file)
        caplog.clear()
        with pytest.raises(SystemExit) as exc:
            main(args(root, out, "--batch_size", "2", "--resume_path", str(ckpt), *extra))
        assert exc.value.code == 2 and expected in one_error(caplog)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert run_dirs(out) == [run_dir]


# ------------------------------------------------------------ item 11: output folders
def _mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}",) + options),
                           "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root with CAP_SYS_ADMIN needed): "
                    f"{done.stderr.strip()}")


def test_impossible_output_dirs_are_one_line_before_training(tmp_path, caplog):
    root = faces(tmp_path / "data", 2, 2)
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    readonly = tmp_path / "readonly"
    _mount_tmpfs(readonly, "64k", "ro")
    try:
        cases = [(a_file, f"--output_dir {a_file}: cannot make the folder, a file is in the way"),
                 (a_file / "runs", "a file is in the way at or above it"),
                 (Path("/proc/faceignite"), "--output_dir /proc/faceignite: cannot make the "
                                            "folder: No such file or directory"),
                 (readonly, f"cannot write {readonly}/resnet34_center-")]
        for out, expected in cases:
            caplog.clear()
            with pytest.raises(SystemExit) as exc:
                main(args(root, out, "--index_cache", str(tmp_path / "index.json")))
            line = one_error(caplog)
            assert exc.value.code == 2 and expected in line, line
        assert "(--output_dir): read-only file system" in line
        assert os.listdir(readonly) == [] and a_file.read_text() == "in the way"
    finally:
        setup_logging()
        subprocess.run(["umount", str(readonly)], check=True)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_earlier_ones_intact(tmp_path,
                                                                              caplog):
    root = faces(tmp_path / "data", 2, 2)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "400m")

    def fill_after_first_epoch(trainer, state) -> None:  # after the epoch's checkpoint
        @trainer.on(Events.EPOCH_COMPLETED(once=1))
        def _fill(_) -> None:
            with open(disk / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
                try:
                    while True:
                        f.write(b"\0" * 1024)
                except OSError:
                    pass

    try:
        with pytest.raises(SystemExit) as exc:
            main(args(root, disk, "--batch_size", "2", "--epochs", "2", "--index_cache",
                      str(tmp_path / "index.json")), hooks=[fill_after_first_epoch])
        (run_dir,) = run_dirs(disk)
        line = one_error(caplog)
        assert exc.value.code == 2
        assert line == (f"error: no space left on device writing "
                        f"{run_dir / 'training_checkpoint_4.pt'} (--output_dir); the earlier "
                        f"checkpoints in {run_dir} are intact")
        assert sorted(p.name for p in run_dir.glob("*.pt*")) == ["training_checkpoint_2.pt"]
        ckpt = torch.load(run_dir / "training_checkpoint_2.pt", weights_only=True)
        assert ckpt["iteration"] == 2
    finally:
        setup_logging()  # closes run.log on that disk
        subprocess.run(["umount", str(disk)], check=True)


# ------------------------------------------------------------ item 7: refused before training
def test_one_identity_epochs_0_and_fp16_on_the_cpu_are_refused_writing_nothing(tmp_path,
                                                                              caplog):
    one = faces(tmp_path / "one", 1, 3)
    two = faces(tmp_path / "two", 2, 2)
    out = tmp_path / "runs"
    cases = [(args(one, out), f"error: {one} holds one identity ({os.listdir(one)[0]}): a model "
              "trained to tell one person from nobody learns nothing; give --dataroot a folder "
              "of two or more identity folders"),
             (args(two, out, "--epochs", "0"),
              "error: --epochs 0: must be at least 1 (0 would save an untrained model)"),
             (args(two, out, "--amp", "fp16"),
              "error: --amp fp16 needs a CUDA GPU (--device cpu is cpu, where fp16 has no "
              "gradient scaler): use --amp bf16 or off")]
    for argv, expected in cases:
        caplog.clear()
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--index_cache", str(tmp_path / "index.json")])
        assert exc.value.code == 2 and one_error(caplog) == expected
        assert not out.exists() or run_dirs(out) == []  # no run folder, no untrained model


# ------------------------------------------------------------ item 1, distributed
def record_steps(trainer, state) -> None:
    """A hook (each process): its step outputs and final weights, written at the end."""
    import ignite.distributed as idist
    from faceignite.runtime import unwrap

    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(
        (int(e.state.output["batch_size"]), int(e.state.output["skipped"]))))

    @trainer.on(Events.COMPLETED)
    def _save(engine) -> None:
        torch.save({"outputs": outputs, "model": unwrap(state.model).state_dict(),
                    "metrics": dict(engine.state.metrics)},
                   Path(state.config["output_dir"]) / f"rank{idist.get_rank()}.pt")


def test_two_processes_with_batches_of_one_and_none_step_together_without_hanging(tmp_path):
    root = faces(tmp_path / "data", 2, 4)  # 8 images, batch 4 in all: 2 steps of 2 a process
    files = sorted(root.rglob("*.jpg"))
    for f in files[1:4] + files[5:]:
        spoil(f)  # one image of each identity decodes (a run that decodes less is refused
        # after its first epoch): each step, a process has 1 image or none (seed 0)
    out = tmp_path / "runs"
    assert main(args(root, out, "--nproc_per_node", "2", "--backend", "gloo", "--n_saved", "1",
                     "--start_method", START_METHOD),
                hooks=[record_steps]) == {}
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = [r["outputs"] for r in ranks]
    assert len(steps[0]) == len(steps[1]) == 2  # every process took part in every step
    assert all(n == 0 for s in steps for n, _ in s)  # nothing trained on a batch under two
    assert sum(k for s in steps for _, k in s) == 8  # every image counted as skipped
    assert ranks[0]["metrics"]["skipped_images"] == ranks[1]["metrics"]["skipped_images"] == 8
    for k, v in ranks[0]["model"].items():  # the replicas stayed identical
        assert torch.equal(v, ranks[1]["model"][k]), k
    (run_dir,) = run_dirs(out)
    assert (run_dir / "training_checkpoint_2.pt").is_file()
