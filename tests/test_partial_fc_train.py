"""--partial_fc in the standard run: 2 gloo processes on the CPU, real JPEGs; checkpoints that
hold the full classifier and centres and resume with or without sharding, on 1 or 2 processes."""
from __future__ import annotations

import math
import os

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Events

from conftest import START_METHOD, copy_subset

from faceignite.checkpoint import unwrap
from handlers.training import main

CLASSES, DIM = 6, 16
# 3 epochs of 4 steps at a constant rate: enough for the loss to fall at this scale
LEARN = ("--epochs", "3", "--lr", "0.01", "--lr_scheduler", "none", "--warmup_epochs", "0")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, synthetic_root):
    """6 identities x 8 real JPEGs: 6 train + 2 held out each (36 + 12 images)."""
    train, _ = synthetic_root
    return copy_subset(train, tmp_path_factory.mktemp("pfc"), identities=CLASSES, images=8)


def run_args(root, output_dir, *extra: str) -> list[str]:
    return ["--dataroot", str(root), "--output_dir", str(output_dir), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "8", "--epochs", "2", "--valid_split", "0.25", "--num_workers", "0",
            "--embedding_dim", str(DIM), "--clearml", "off", "--device", "cpu", "--n_saved", "3",
            "--log_interval", "0", *extra]


def record(trainer, state) -> None:
    """A recipe hook (runs in each process): the criterion at the start (after a resume) and
    each epoch's metrics, written per rank at the end."""
    criterion = unwrap(state.criterion)
    seen: dict = {"epochs": []}

    @trainer.on(Events.STARTED)
    def _start(engine) -> None:
        seen["start"] = {k: v.detach().clone() for k, v in criterion.state_dict().items()}
        seen["start_iteration"] = engine.state.iteration

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine) -> None:
        seen["epochs"].append({k: float(v) for k, v in engine.state.metrics.items()
                               if k.startswith(("train_", "val_"))})

    @trainer.on(Events.COMPLETED)
    def _save(engine) -> None:
        path = os.path.join(state.config["output_dir"], f"pfc-rank{idist.get_rank()}.pt")
        torch.save({**seen, "world_size": idist.get_world_size(), "type": type(criterion).__name__,
                    "rows": [getattr(criterion, "class_start", 0),
                             getattr(criterion, "class_stop", CLASSES)],
                    "end": criterion.state_dict(), "iteration": engine.state.iteration}, path)


def load(path):
    return torch.load(path, weights_only=True)


def test_two_processes_train_sharded_and_resume_in_one_plain(faces, tmp_path):
    out = tmp_path / "runs"
    main(run_args(faces, out, "--partial_fc", "--nproc_per_node", "2", "--backend", "gloo",
                  "--start_method", START_METHOD, *LEARN), hooks=[record])
    rank0, rank1 = load(out / "pfc-rank0.pt"), load(out / "pfc-rank1.pt")
    assert rank0["type"] == "PartialFC" and rank0["world_size"] == 2
    assert rank0["rows"] == [0, 3] and rank1["rows"] == [3, 6]  # each holds half the classes
    assert rank0["end"]["classifier.weight"].shape == (3, DIM)
    # the same global metrics in both processes; the training loss falls; held-out evaluated
    assert rank0["epochs"] == rank1["epochs"] and len(rank0["epochs"]) == 3
    first, last = rank0["epochs"][0], rank0["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_center"] < first["train_center"]  # the sharded centres follow
    assert 0.0 <= last["val_accuracy"] <= 1.0 and math.isfinite(last["val_loss"])

    # rank 0 wrote the FULL classifier, centres and classifier momentum: both shards, in order
    run_dir = next(out.glob("resnet34_center-*"))
    ckpt = load(run_dir / "training_checkpoint_12.pt")
    assert ckpt["num_classes"] == CLASSES and ckpt["world_size"] == 2
    state = ckpt["criterion_state_dict"]
    assert sorted(state) == ["center_loss.centers", "classifier.bias", "classifier.weight"]
    for key in state:
        assert state[key].shape[0] == CLASSES
        assert torch.equal(state[key], torch.cat([rank0["end"][key], rank1["end"][key]])), key
    momentum = [s["momentum_buffer"] for s in ckpt["optimizer_model_state_dict"]["state"].values()]
    assert sorted(tuple(m.shape) for m in momentum if m.shape[0] == CLASSES) == \
        [(CLASSES,), (CLASSES, DIM)]
    assert "best_checkpoint" in " ".join(os.listdir(run_dir))  # val_accuracy was computed

    # one plain process (no --partial_fc) goes on from it, at epoch 4, with the same weights
    resumed_out = tmp_path / "resumed"
    metrics = main(run_args(faces, resumed_out, *LEARN, "--epochs", "4", "--resume_path",
                            str(run_dir / "training_checkpoint_12.pt")), hooks=[record])
    plain = load(resumed_out / "pfc-rank0.pt")
    assert plain["type"] == "SoftmaxCenterLoss" and plain["world_size"] == 1
    assert plain["start_iteration"] == 12 and plain["iteration"] == 16
    for key in state:
        assert torch.equal(plain["start"][key], state[key]), key
    assert math.isfinite(metrics["train_loss"]) and "val_accuracy" in metrics
    assert load(run_dir / "training_checkpoint_16.pt")["world_size"] == 1


def test_one_plain_process_resumes_in_two_sharded_with_sampling(faces, tmp_path):
    out = tmp_path / "runs"
    main(run_args(faces, out, "--epochs", "1"))
    run_dir = next(out.glob("resnet34_center-*"))
    ckpt = load(run_dir / "training_checkpoint_4.pt")
    main(run_args(faces, out, "--partial_fc", "--sample_rate", "0.5", "--nproc_per_node", "2",
                  "--backend", "gloo", "--start_method", START_METHOD,
                  "--resume_path", str(run_dir)), hooks=[record])
    rank0, rank1 = load(out / "pfc-rank0.pt"), load(out / "pfc-rank1.pt")
    assert rank0["world_size"] == 2 and rank0["type"] == "PartialFC"
    for rank in (rank0, rank1):  # each process loaded its own rows of the plain checkpoint
        start, stop = rank["rows"]
        assert rank["start_iteration"] == 4 and rank["iteration"] == 8
        for key, full in ckpt["criterion_state_dict"].items():
            assert torch.equal(rank["start"][key], full[start:stop]), key
    assert rank0["epochs"] == rank1["epochs"]
    assert math.isfinite(rank0["epochs"][-1]["train_loss"])
    after = load(run_dir / "training_checkpoint_8.pt")
    assert after["world_size"] == 2
    assert after["criterion_state_dict"]["classifier.weight"].shape == (CLASSES, DIM)
    assert not torch.equal(after["criterion_state_dict"]["classifier.weight"],
                           ckpt["criterion_state_dict"]["classifier.weight"])  # it trained


def test_options_refuse_what_partial_fc_cannot_do(faces, tmp_path):
    """--sample_rate outside (0, 1], or without --partial_fc, and --partial_fc with the triplet
    loss: one-line errors, exit code 2, before any training."""
    from faceignite.config import options_group, parse_args
    from faceignite.errors import FaceIgniteError
    from faceignite.losses.factory import LOSSES, LossOptions

    for rate in ("0", "1.5"):
        with pytest.raises(FaceIgniteError, match=r"--sample_rate .*must be in \(0, 1\]"):
            parse_args(["--partial_fc", "--sample_rate", rate])
    cfg = parse_args(["--sample_rate", "0.5"])
    with pytest.raises(FaceIgniteError, match="--sample_rate 0.5: needs --partial_fc"):
        LOSSES["center"](options_group(cfg, LossOptions), CLASSES)
    with pytest.raises(FaceIgniteError, match="--partial_fc: the triplet loss"):
        LOSSES["triplet"](options_group(parse_args(["--partial_fc"]), LossOptions), CLASSES)
    with pytest.raises(SystemExit) as exit_info:
        main(run_args(faces, tmp_path, "--sample_rate", "0.5"))
    assert exit_info.value.code == 2


def test_arcface_head_in_one_process_is_one_shard(faces, tmp_path):
    """--partial_fc in a single process: one shard holding every class (ArcFace head)."""
    out = tmp_path / "runs"
    metrics = main(run_args(faces, out, "--partial_fc", "--epochs", "1"), hooks=[record],
                   name="resnet34_arcface", loss="arcface")
    rank0 = load(out / "pfc-rank0.pt")
    assert rank0["type"] == "PartialFC" and rank0["rows"] == [0, CLASSES]
    assert math.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_accuracy"] <= 1.0
    ckpt = load(next(out.glob("resnet34_arcface-*")) / "training_checkpoint_4.pt")
    assert ckpt["criterion_state_dict"]["weight"].shape == (CLASSES, DIM)
    assert ckpt["num_classes"] == CLASSES


def test_a_batch_without_images_is_skipped_with_a_collective_criterion():
    """A step whose images all failed to decode is skipped in one process (counted, loss 0,
    the criterion not called: nobody waits for it), and the next real batch trains as usual.
    In a distributed run the skipped step still takes part in every collective with a zero
    contribution (tests/test_reliability_runs.py)."""
    from faceignite.engine import create_trainer
    from faceignite.losses import PartialFC
    from faceignite.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", DIM, None)
    criterion = PartialFC(CLASSES, DIM, "softmax")
    calls = []
    criterion.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    optimizers = {"model": torch.optim.SGD(list(model.parameters())
                                           + criterion.model_parameters(), lr=0.1),
                  "centers": torch.optim.SGD(criterion.center_parameters(), lr=0.5)}
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    empty = (torch.empty(0), torch.empty(0, dtype=torch.long), 4)
    real = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), 0)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: outputs.append(dict(e.state.output)))
    trainer.run([empty, real], max_epochs=1)
    assert calls == [4]
    assert outputs[0]["loss"] == 0 and outputs[0]["batch_size"] == 0
    assert outputs[1]["batch_size"] == 4 and outputs[1]["loss"] > 0
