"""Checkpoint contents, safe loading, mismatch and corruption errors, crash-safe writes, export,
and Ctrl-C handling, on real files and real Ignite engines."""
import json
import os
import pickle
import random
import shutil
import signal

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from faceignite.checkpoint import (ORIGINAL_KEYS, RESUME_KEYS, RNGState, Resume, ResumeOptions,
                                   TrainingState,
                                   load_backbone, load_checkpoint)
from faceignite.config import options_group, parse_args, plain_config
from faceignite.data import DataOptions, build_face_data
from faceignite.engine import create_trainer
from faceignite.errors import FaceIgniteError
from faceignite.export import load_embedding_model, main as export_main
from faceignite.losses import SoftmaxCenterLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from handlers import checkpoint as checkpoint_handler
from handlers import events
from handlers import interrupt, lr_scheduler

from conftest import copy_subset

from handlers.training import main


def small_args(root, out, *more):
    return ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "4", "--epochs", "2", "--valid_split", "0.34", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", *more]


def build_run(cfg, data, embedding_dim=None, num_classes=None):
    model = build_model(cfg.model, embedding_dim or cfg.embedding_dim)
    criterion = SoftmaxCenterLoss(num_classes or data.num_classes,
                                  embedding_dim or cfg.embedding_dim)
    optimizers = build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5)
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    scheduler = lr_scheduler.attach(trainer, optimizers["model"], 0.1, cfg.epochs,
                                    len(data.train_loader), **lr_scheduler.schedule_options(cfg))
    return TrainingState(trainer, model, criterion, optimizers, scheduler, data, plain_config(cfg))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, synthetic_root):
    """A real checkpoint after one training iteration on 4 identities x 3 JPEGs."""
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path_factory.mktemp("small"), identities=4, images=3)
    out = tmp_path_factory.mktemp("ckpt")
    cfg = parse_args(small_args(root, out))
    data = build_face_data(options_group(cfg, DataOptions))
    state = build_run(cfg, data)
    saver = checkpoint_handler.attach(state.trainer, state, str(out), n_saved=2)
    state.trainer.run(data.train_loader, max_epochs=1, epoch_length=1)
    yield {"path": saver.last_checkpoint, "cfg": cfg, "data": data, "state": state, "root": root}
    shutil.rmtree(out, ignore_errors=True)


def test_checkpoint_has_original_and_resume_keys_and_loads_weights_only(saved):
    ckpt = torch.load(saved["path"], weights_only=True)  # tensors and plain containers only
    assert set(ORIGINAL_KEYS) <= set(ckpt) and set(RESUME_KEYS) <= set(ckpt)
    assert os.path.basename(saved["path"]) == "training_checkpoint_1.pt"
    assert (ckpt["model_architecture"], ckpt["num_classes"], ckpt["embedding_dimension"],
            ckpt["batch_size_training"], ckpt["image_size"]) == ("tiny", 4, 128, 4, 32)
    assert ckpt["trainer_state_dict"]["iteration"] == 1 and ckpt["epoch"] == 1
    assert ckpt["criterion_state_dict"]["center_loss.centers"].shape == (4, 128)
    assert ckpt["optimizer_model_state_dict"]["state"]  # momentum buffers after one step
    assert ckpt["split"]["val_indices"].tolist() == saved["data"].val_indices
    assert ckpt["split"]["num_images"] == 12
    assert torch.equal(ckpt["model_state_dict"]["embedding.0.weight"],
                       saved["state"].model.embedding[0].weight.detach())


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    state = RNGState().state_dict()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move on
    RNGState().load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_other_architecture_or_embedding_size_is_refused_before_training(saved, tmp_path):
    cfg = parse_args(small_args(saved["root"], tmp_path, "--model", "resnet50",
                                "--resume_path", saved["path"]))
    with pytest.raises(FaceIgniteError, match=r"architecture tiny in the checkpoint, "
                                               r"resnet50 here \(--model\)"):
        Resume.from_options(options_group(cfg, ResumeOptions))
    cfg = parse_args(small_args(saved["root"], tmp_path, "--embedding_dim", "64",
                                "--resume_path", saved["path"]))
    with pytest.raises(FaceIgniteError, match=r"embedding size 128 in the checkpoint, 64 here.*"
                                               r"--finetune loads its backbone alone"):
        Resume.from_options(options_group(cfg, ResumeOptions))
    cfg = parse_args(small_args(saved["root"], tmp_path, "--batch_size", "2",
                                "--resume_path", saved["path"]))
    with pytest.raises(FaceIgniteError, match=r"--batch_size 4 \(checkpoint\) vs 2 \(here\)"):
        Resume.from_options(options_group(cfg, ResumeOptions))


def test_other_number_of_classes_is_refused_and_nothing_is_loaded(saved):
    ckpt = load_checkpoint(saved["path"])
    state = build_run(saved["cfg"], saved["data"], num_classes=7)
    before = state.model.embedding[0].weight.detach().clone()
    with pytest.raises(FaceIgniteError, match="number of classes 4 in the checkpoint, 7 here"):
        state.load_state_dict(ckpt)
    assert torch.equal(before, state.model.embedding[0].weight)


def test_finetune_loads_the_backbone_alone(saved):
    ckpt = load_checkpoint(saved["path"])
    model = build_model("tiny", 64)
    load_backbone(model, ckpt)
    for name, value in model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(value, ckpt["model_state_dict"][name]), name
    assert model.embedding[0].weight.shape == (64, 64)  # the tiny trunk gives 64 features
    cfg = parse_args(small_args(saved["root"], "unused", "--model", "resnet50", "--finetune",
                                "--resume_path", saved["path"]))
    with pytest.raises(FaceIgniteError, match="architecture tiny in the checkpoint, resnet50"):
        Resume.from_options(options_group(cfg, ResumeOptions))


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_truncated_or_corrupt_file_is_a_clear_error_naming_it(saved, tmp_path, damage):
    data = open(saved["path"], "rb").read()
    bad = tmp_path / "training_checkpoint_7.pt"
    bad.write_bytes({"truncated": data[: len(data) // 2],
                     "random bytes": np.random.default_rng(0).bytes(4096), "empty": b""}[damage])
    with pytest.raises(FaceIgniteError, match=rf"{bad}.*(truncated or corrupt|not a readable)"):
        load_checkpoint(str(bad))


def test_a_non_checkpoint_file_and_a_missing_file_are_named(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(FaceIgniteError, match="is not a training checkpoint"):
        load_checkpoint(str(tmp_path / "tensor.pt"))
    with pytest.raises(FaceIgniteError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(FaceIgniteError, match="no training_checkpoint_<iteration>.pt in folder"):
        load_checkpoint(str(tmp_path))


class Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    control = tmp_path / "control-marker"
    torch.save({"model_state_dict": Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is real ...
    assert control.exists()

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": Payload(marker), "model_architecture": "resnet34",
                "embedding_dimension": 128}, evil)
    with pytest.raises(FaceIgniteError, match=rf"refusing to load {evil}: .*open"):
        load_checkpoint(str(evil))
    raw = tmp_path / "raw.pt"  # a bare pickle, not torch's zip format
    raw.write_bytes(pickle.dumps({"model_state_dict": Payload(marker)}))
    with pytest.raises(FaceIgniteError, match=str(raw)):
        load_checkpoint(str(raw))
    assert not marker.exists()  # ... and loading it through faceignite never ran it


class Weights:
    def __init__(self):
        self.layer = nn.Linear(64, 64)
        self.extra = None

    def state_dict(self):
        state = {"w": self.layer.weight.detach().clone()}
        if self.extra is not None:
            state["extra"] = self.extra
        return state


def test_a_failed_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    obj = Weights()
    engine = Engine(lambda e, b: None)
    saver = checkpoint_handler.attach(engine, obj, str(tmp_path), n_saved=1)
    engine.run([0], max_epochs=1)
    first = saver.last_checkpoint
    obj.extra = lambda: None  # cannot be pickled: torch.save fails half-way through the file
    engine.state.max_epochs = 2
    with pytest.raises(FaceIgniteError, match="could not write checkpoint .* earlier checkpoints"):
        engine.run([0], max_epochs=2)
    assert os.listdir(tmp_path) == [os.path.basename(first)]  # no partial file left behind
    assert torch.equal(torch.load(first, weights_only=True)["w"], obj.layer.weight.detach())


def test_keeps_n_saved_across_a_resume_and_saves_between_epochs(tmp_path):
    obj = Weights()
    engine = Engine(lambda e, b: None)
    checkpoint_handler.attach(engine, obj, str(tmp_path), n_saved=2, save_interval=3)
    engine.run(range(4), max_epochs=3)  # epochs end at 4, 8, 12; interval saves at 3, 6, 9
    names = lambda: sorted(p for p in os.listdir(tmp_path) if p.endswith(".pt"))  # noqa: E731
    assert names() == ["training_checkpoint_12.pt", "training_checkpoint_9.pt"]
    resumed = Engine(lambda e, b: None)
    saver = checkpoint_handler.attach(resumed, obj, str(tmp_path), n_saved=2)
    resumed.load_state_dict({"iteration": 12, "epoch_length": 4, "max_epochs": 3})
    resumed.run(range(4), max_epochs=5)
    assert names() == ["training_checkpoint_16.pt", "training_checkpoint_20.pt"]
    assert saver.last_checkpoint.endswith("training_checkpoint_20.pt")


def test_best_checkpoint_follows_the_validation_event(tmp_path):
    engine = Engine(lambda e, b: None)
    events.register(engine)
    saver = checkpoint_handler.attach(engine, Weights(), str(tmp_path), n_saved=3,
                                      best_by="val_accuracy")
    scores = iter([0.5, 0.7, 0.6])

    @engine.on(Events.EPOCH_COMPLETED)
    def validate(e):
        e.state.metrics["val_accuracy"] = next(scores)
        e.fire_event(events.ValidationEvents.HOLDOUT_COMPLETED)

    engine.run([0], max_epochs=3)
    assert os.path.basename(saver.best_checkpoint) == "best_checkpoint_2_val_accuracy=0.7000.pt"
    assert len([p for p in os.listdir(tmp_path) if p.startswith("best_")]) == 1


def test_ctrl_c_saves_after_the_iteration_then_stops(tmp_path):
    engine = Engine(lambda e, b: os.kill(os.getpid(), signal.SIGINT) if b == 2 else None)
    saved_at = []
    handler = interrupt.attach(engine, lambda e: saved_at.append(e.state.iteration) or "ckpt.pt")
    previous = signal.getsignal(signal.SIGINT)
    expected = "interrupted by SIGINT at epoch 1 iteration 3: checkpoint saved to ckpt.pt"
    with pytest.raises(interrupt.TrainingInterrupted, match=expected) as exc:
        engine.run(range(10), max_epochs=2)
    assert saved_at == [3] and engine.state.iteration == 3  # the iteration finished, no further
    assert exc.value.exit_code == 130 and exc.value.checkpoint == "ckpt.pt"
    assert signal.getsignal(signal.SIGINT) is previous and handler.received == signal.SIGINT


def test_export_writes_weights_and_json_loadable_in_one_call(saved, tmp_path):
    out = tmp_path / "model"
    export_main(["--checkpoint", os.path.dirname(saved["path"]), "--out", str(out)])
    info = json.loads((out / "embedding_model.json").read_text())
    assert (info["architecture"], info["embedding_dim"], info["image_size"]) == (
        "tiny", 128, 32)
    assert info["trained"]["checkpoint"] == saved["path"]
    assert (info["distance"], info["lfw_flip"], info["lfw_threshold"]) == ("l2", False, None)
    model = load_embedding_model(str(out))
    assert not model.training and model.export_config["sha256"] == info["sha256"]
    reference = saved["state"].model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), reference.embed(x), atol=1e-6)
    weights = out / "embedding_model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(FaceIgniteError, match="SHA-256 differs"):
        load_embedding_model(str(out))


def test_recipe_exits_with_one_line_naming_the_mismatch(saved, tmp_path, caplog):
    with pytest.raises(SystemExit) as exc:
        main(small_args(saved["root"], tmp_path, "--embedding_dim", "64",
                        "--resume_path", saved["path"]))
    assert exc.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "embedding size 128 in the checkpoint, 64 here" in errors[0]


def test_resume_on_a_shrunk_training_folder_names_the_change(saved, tmp_path, caplog):
    root = copy_subset(saved["root"], tmp_path / "shrunk", identities=2, images=3)
    with pytest.raises(SystemExit) as exc:
        main(small_args(root, tmp_path, "--resume_path", saved["path"]))
    assert exc.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "the training folder changed since it was saved" in errors[0]
    assert "now holds 6 images" in errors[0]


def test_finetune_restore_starts_a_new_run_from_the_weights(saved):
    ckpt = load_checkpoint(saved["path"])
    state = build_run(saved["cfg"], saved["data"], embedding_dim=64, num_classes=9)
    Resume(ckpt, finetune=True).restore(state)
    # the backbone's last BatchNorm statistics (the run's --model: tiny)
    name = [k for k in ckpt["model_state_dict"] if k.startswith("backbone.")
            and k.endswith("running_mean")][-1]
    assert torch.equal(state.model.state_dict()[name], ckpt["model_state_dict"][name])
    assert state.trainer.state.iteration == 0 and not state.optimizers["model"].state
