"""The second original system as its users ran it: VGG16, its JSON config files (exact keys),
``n_triplets`` random triplets, ``resume: true`` (``--resume_path auto``).

The two VGG16 runs use a few real CelebA faces at 32 px, one or two iterations; everything whose
subject is not VGG16 uses ``--model tiny``."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from conftest import START_METHOD, copy_subset, errors, one_error, shared_path
from faceignite.config import parse_args
from faceignite.data.sampler import follow_trainer
from faceignite.data.triplet_sampler import RandomTripletSampler
from faceignite.verification.make_pairs import make_pairs_set
from faceignite.models import build_model
from faceignite.run import _free_port
from second_system_worker import agreed_worker

from handlers.training import main as train

REPO = Path(__file__).resolve().parents[1]


def experiment_defaults(name: str) -> dict:
    """The ``VGG16_DEFAULTS`` of ``experiments/<name>.py`` (the file, not a copy)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VGG16_DEFAULTS


def second_system_file(path: Path, data: Path, pairs: Path, log_dir: Path, **changes) -> Path:
    """``training_certer.json`` with every key of the second system, small values."""
    config = {"dataroot": str(data), "lfw_dir": str(pairs), "lfw_pairs_path": str(pairs / "pairs.txt"),
              "log_dir": str(log_dir), "resume": False, "start_epoch": 0, "epochs": 1,
              "no_cuda": False, "gpu_id": "0,1", "num_workers": 0, "seed": 0, "val_interval": 200,
              "log_interval": 1, "save_interval": 500, "batch_size": 8, "test_batch_size": 16,
              "optimizer": "sgd", "lr": 0.01, "center_loss_weight": 0.5, "alpha": 0.5,
              "beta1": 0.9, "lr_decay": 1e-4, "wd": 0.0, **changes}
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[Path, Path]:
    """4 real CelebA identities x 4 images (training) and an 8-pair LFW-format set of others."""
    celeba = shared_path("celeba_subset", "aligned-160")
    root = tmp_path_factory.mktemp("faces")
    train_root = copy_subset(celeba, root / "train", identities=4, images=4)
    others = sorted(os.listdir(celeba))[10:16]
    make_pairs_set(str(celeba), str(root / "pairs"), others, folds=2, per_fold=4, seed=0)
    return train_root, root / "pairs"


NO_VALIDATION = ("--valid_split", "0")  # no held-out pass: LFW (the file's lfw_dir) only


def run_dir_of(log_dir: Path) -> Path:
    (run,) = [p for p in log_dir.iterdir() if p.is_dir() and p.name != "cache"]
    return run


# --------------------------------------------------------------------------- VGG16, real faces
@pytest.mark.slow  # trains the real VGG16 (138 M parameters) on real faces
def test_center_json_trains_vgg16_and_its_config_json_shows_every_mapped_value(
        faces, tmp_path, caplog):
    data, pairs = faces
    file = second_system_file(tmp_path / "training_certer.json", data, pairs, tmp_path / "ckpt",
                              batch_size=16, lr=0.01)  # 16 images: one iteration
    caplog.set_level(logging.INFO)
    metrics = train(["--config", str(file), "--image_size", "32", "--lr", "0.02",
                     "--clearml", "off", *NO_VALIDATION], name="vgg16_center", loss="center",
                    handle_signals=False, **experiment_defaults("vgg16_center"))
    assert np.isfinite(metrics["train_loss"]) and "lfw_accuracy" in metrics  # lfw_dir's pairs
    run = run_dir_of(tmp_path / "ckpt")  # log_dir holds the run folders
    assert (run / "training_checkpoint_1.pt").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "vgg16" and saved["image_size"] == 32
    assert saved["lr"] == 0.02  # the flag beats the file
    expected = {"dataroot": str(data), "lfw": str(pairs), "lfw_pairs": str(pairs / "pairs.txt"),
                "output_dir": str(tmp_path / "ckpt"), "resume_path": None, "epochs": 1,
                "gpus": "0,1", "num_workers": 0, "seed": 0, "val_interval": 200,
                "log_interval": 1, "save_interval": 500, "batch_size": 16,
                "lfw_batch_size": 16, "optimizer": "sgd", "center_loss_weight": 0.5,
                "center_loss_lr": 0.5, "adam_beta1": 0.9, "adagrad_lr_decay": 1e-4,
                "weight_decay": 0.0}
    assert {k: saved[k] for k in expected} == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("start_epoch" in w for w in warnings) == 1
    if not torch.cuda.is_available():  # "no_cuda": false, "gpu_id": "0,1" on a CPU machine
        assert saved["device"] == "cpu"
        assert sum("--gpus 0,1: no CUDA" in w for w in warnings) == 1


@pytest.mark.slow  # trains the real VGG16 (138 M parameters) on real faces
def test_triplet_json_trains_vgg16_on_n_random_triplets(faces, tmp_path, caplog):
    data, pairs = faces
    file = second_system_file(tmp_path / "training_triplet.json", data, pairs, tmp_path / "ckpt",
                              n_triplets=4, margin=0.5, batch_size=2, no_cuda=True)
    caplog.set_level(logging.INFO)
    metrics = train(["--config", str(file), "--image_size", "32", "--clearml", "off",
                     *NO_VALIDATION],
                    name="vgg16_triplet", loss="triplet", handle_signals=False,
                    **experiment_defaults("vgg16_triplet"))
    assert np.isfinite(metrics["train_loss"])
    run = run_dir_of(tmp_path / "ckpt")
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["triplet_mining"], saved["n_triplets"], saved["margin"],
            saved["device"]) == ("vgg16", "random", 4, 0.5, "cpu")
    log = (run / "run.log").read_text()
    assert "random triplets: 4 per epoch, 2 per batch" in log
    assert "epoch 1 iteration 2 |" in log and "epoch 1 iteration 3 |" not in log


def test_vgg16_models_take_any_size_from_32_px_and_imagenet_weights(tmp_path):
    with torch.device("meta"):  # shapes only: 134 M parameters neither stored nor initialised
        nets = {name: build_model(name, 8, image_size=32).eval() for name in ("vgg16_bn", "vgg16")}
        for net in nets.values():
            assert net.embed(torch.randn(2, 3, 32, 48)).shape == (2, 8)
    with pytest.raises(Exception, match="--image_size 32 or more"):
        build_model("vgg16", 64, image_size=24)
    # an ImageNet-style file: torchvision's VGG16 (its names and shapes, from the meta model),
    # the 1000-class classifier.6 it drops included; two tensors random, the rest zeros
    shapes = {k: v.shape for k, v in nets["vgg16"].backbone.state_dict().items()}
    torch.manual_seed(0)
    weights = {k: torch.randn(shape) if k in ("features.0.weight", "classifier.3.weight")
               else torch.zeros(shape) for k, shape in shapes.items()}
    weights["classifier.6.weight"] = torch.zeros(1000, 4096)
    weights["classifier.6.bias"] = torch.zeros(1000)
    torch.save(weights, tmp_path / "vgg16-imagenet.pth")
    model = build_model("vgg16", 8, pretrained=str(tmp_path / "vgg16-imagenet.pth"))
    assert torch.equal(model.backbone.features[0].weight, weights["features.0.weight"])
    assert torch.equal(model.backbone.classifier[3].weight, weights["classifier.3.weight"])
    assert not model.backbone.classifier[0].weight.any()  # every trunk tensor from the file


# --------------------------------------------------------------------------- config files
def tiny_args(tmp_path: Path, synthetic_root) -> list[str]:
    train_root, _ = synthetic_root
    root = tmp_path / "data"
    if not root.exists():
        copy_subset(train_root, root, identities=4, images=4)
    return ["--model", "tiny", "--dataroot", str(root), "--image_size", "32",
            "--batch_size", "8", "--epochs", "1", "--valid_split", "0.25", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--log_interval", "1"]


def first_loss(run: Path) -> str:
    return re.search(r"epoch 1 iteration 1 \| loss (\S+)", (run / "run.log").read_text()).group(1)


def test_a_runs_config_json_reruns_it_with_the_same_first_loss(tmp_path, synthetic_root,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(tiny_args(tmp_path, synthetic_root) + ["--seed", "5", "--output_dir", "first"],
          name="rerun", handle_signals=False)
    original = run_dir_of(tmp_path / "first")
    before = {p.name: p.stat().st_mtime_ns for p in original.iterdir()}
    train(["--config", str(original / "config.json")], name="rerun", handle_signals=False)
    # output_dir is not taken over: the rerun is a new run in the default ./runs
    rerun = run_dir_of(tmp_path / "runs")
    assert first_loss(rerun) == first_loss(original)
    assert {p.name: p.stat().st_mtime_ns for p in original.iterdir()} == before
    saved = json.loads((rerun / "config.json").read_text())
    assert saved["seed"] == 5 and saved["model"] == "tiny" and saved["output_dir"] == "runs"


def test_flags_beat_the_file_which_beats_the_experiments_defaults(tmp_path):
    file = tmp_path / "options.yaml"
    file.write_text("lr: 0.2\nepochs: 7\nlr_milestones: [0.5, 0.8]\nlfw_flip: true\n")
    cfg = parse_args(["--config", str(file), "--epochs", "3"], lr=0.01, epochs=50,
                     optimizer="adam")
    assert (cfg.lr, cfg.epochs, cfg.optimizer, cfg.lr_milestones, cfg.lfw_flip) == (
        0.2, 3, "adam", [0.5, 0.8], True)


def test_a_byte_order_mark_is_read(tmp_path):
    file = tmp_path / "bom.json"
    file.write_bytes(b"\xef\xbb\xbf" + json.dumps({"batch_size": 12}).encode())
    assert parse_args(["--config", str(file)]).batch_size == 12


@pytest.mark.parametrize("name, content, wanted", [
    ("typo.json", '{"batchsize": 8}', "unknown key 'batchsize'; the closest known key is "
                                      "'batch_size'"),
    ("old.json", '{"lfw_pair_path": "p.txt"}', "closest known key is 'lfw_pairs_path'"),
    ("type.json", '{"batch_size": "many"}', "batch_size (--batch_size) must be a whole number"),
    ("bool.json", '{"lr": true}', "lr (--lr) must be a number"),
    ("half.json", '{"epochs": 2.5}', "epochs (--epochs) must be a whole number"),
    ("choice.json", '{"optimizer": "rmsprop"}', "must be one of sgd, adam, adagrad"),
    ("range.json", '{"batch_size": 1}', "batch_size (--batch_size) must be at least 2"),
    ("neg.json", '{"wd": -0.1}', "wd (--weight_decay) must be at least 0"),
    ("resume.json", '{"resume": "yes"}', "resume must be true or false"),
    ("broken.json", '{"epochs": 3,\n "lr": }', "line 2 column 8: not valid JSON"),
    ("list.json", '[{"epochs": 3}]', "holds a list, not an object"),
    ("empty.json", "\n", "the file is empty"),
    ("broken.yaml", "epochs: [3\nlr: 0.1\n", "not valid YAML"),
    ("options.toml", "epochs = 3", "unknown extension '.toml'"),
])
def test_a_bad_config_file_is_one_line_naming_it_and_exit_2(name, content, wanted, tmp_path,
                                                             caplog, synthetic_root):
    file = tmp_path / name
    file.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_args(tmp_path, synthetic_root) + ["--config", str(file),
                                                     "--output_dir", str(tmp_path / "runs")],
              handle_signals=False)
    assert exit_info.value.code == 2
    line = one_error(caplog)
    assert str(file) in line and wanted in line, line
    assert not (tmp_path / "runs").exists()  # nothing written


# --------------------------------------------------------------------------- random triplets
LABELS = [0] * 3 + [1] + [2] * 5 + [3] * 2 + [4] * 4  # identity 1 has one image


def test_an_epoch_has_exactly_n_triplets_of_the_right_identities():
    for epoch in (0, 1):
        sampler = RandomTripletSampler(LABELS, 50, seed=3)
        sampler.set_epoch(epoch)
        keys = [index for index, _ in sampler]
        assert len(keys) == 3 * 50 == len(sampler)
        triplets = np.asarray(keys).reshape(-1, 3)
        labels = np.asarray(LABELS)[triplets]
        assert (labels[:, 0] == labels[:, 1]).all() and (triplets[:, 0] != triplets[:, 1]).all()
        assert (labels[:, 2] != labels[:, 0]).all()
        assert 1 not in labels[:, 0]  # no positive from a one-image identity
    again = RandomTripletSampler(LABELS, 50, seed=3)
    again.set_epoch(1)
    assert [k for k, _ in again] == keys  # reproducible with the seed
    other = RandomTripletSampler(LABELS, 50, seed=4)
    other.set_epoch(1)
    assert [k for k, _ in other] != keys


class Keys(torch.utils.data.Dataset):
    def __getitem__(self, key):
        return torch.tensor(key)

    def __len__(self):
        return 0


def batches_of(sampler, stop_at=None, trainer_state=None) -> dict[int, list]:
    """Batches (3 triplets each) a real Ignite engine took, keyed by the iteration."""
    seen = {}
    engine = Engine(lambda e, b: seen.__setitem__(e.state.iteration, b.tolist()))
    follow_trainer(engine)
    if stop_at:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    if trainer_state:
        engine.load_state_dict(trainer_state)
    engine.run(DataLoader(Keys(), batch_size=9, sampler=sampler), max_epochs=2)
    return seen, engine


def test_resume_mid_epoch_continues_the_same_triplets():
    full, _ = batches_of(RandomTripletSampler(LABELS, 12, seed=7))  # 4 iterations per epoch
    assert len(full) == 8
    first, engine = batches_of(RandomTripletSampler(LABELS, 12, seed=7), stop_at=6)
    state = RandomTripletSampler(LABELS, 12, seed=7)
    state.load_state_dict(json.loads(json.dumps(engine.state.dataloader.sampler.state_dict())))
    rest, _ = batches_of(state, trainer_state=engine.state_dict())
    assert sorted(rest) == [7, 8]
    assert {**first, **rest} == full


def test_random_triplets_resume_mid_epoch_exactly(tmp_path, synthetic_root):
    args = tiny_args(tmp_path, synthetic_root) + [
        "--n_triplets", "12", "--batch_size", "3", "--epochs", "2", "--save_interval", "2",
        "--n_saved", "10", "--valid_split", "0", "--lfw_validation_epoch_interval", "2"]
    train(args + ["--output_dir", str(tmp_path / "whole")], name="rt", loss="triplet",
          handle_signals=False)  # 4 iterations of 3 triplets per epoch
    whole = run_dir_of(tmp_path / "whole")
    middle = torch.load(whole / "training_checkpoint_2.pt", weights_only=True)
    assert middle["sampler_state_dict"] == {"seed": 0, "epoch": 0, "position": 18}
    (tmp_path / "resumed").mkdir()
    (tmp_path / "resumed" / "training_checkpoint_2.pt").write_bytes(
        (whole / "training_checkpoint_2.pt").read_bytes())
    train(args + ["--output_dir", str(tmp_path / "unused"), "--resume_path",
                  str(tmp_path / "resumed" / "training_checkpoint_2.pt")], name="rt",
          loss="triplet", handle_signals=False)
    end = [torch.load(folder / "training_checkpoint_8.pt", weights_only=True)["model_state_dict"]
           for folder in (whole, tmp_path / "resumed")]
    assert all(torch.equal(end[0][k], end[1][k]) for k in end[0])


def test_gpus_must_be_gpu_numbers(tmp_path, caplog, synthetic_root):
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_args(tmp_path, synthetic_root)[:-6] + ["--gpus", "0,x", "--clearml", "off"],
              handle_signals=False)
    assert exit_info.value.code == 2
    assert "--gpus 0,x: give distinct GPU numbers" in one_error(caplog)


def test_n_triplets_selects_random_mining_and_conflicts_with_a_miner(tmp_path, caplog,
                                                                     synthetic_root):
    assert parse_args(["--n_triplets", "9"]).triplet_mining == "random"
    assert parse_args([]).triplet_mining == "semi_hard"
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_args(tmp_path, synthetic_root) + [
            "--n_triplets", "9", "--triplet_mining", "batch_hard",
            "--output_dir", str(tmp_path / "runs")], loss="triplet", handle_signals=False)
    assert exit_info.value.code == 2
    assert "--n_triplets 9 is for --triplet_mining random" in one_error(caplog)


# --------------------------------------------------------------------------- resume: true
def test_resume_auto_starts_fresh_then_continues_the_newest_complete_checkpoint(
        tmp_path, synthetic_root, caplog):
    args = tiny_args(tmp_path, synthetic_root) + ["--output_dir", str(tmp_path / "runs"),
                                                  "--n_saved", "5", "--lr_scheduler", "none",
                                                  "--warmup_epochs", "0"]
    config = tmp_path / "resume.json"
    config.write_text(json.dumps({"resume": True, "log_dir": str(tmp_path / "runs")}))
    train(args + ["--config", str(config)], name="auto", handle_signals=False)  # none yet: fresh
    (run,) = (tmp_path / "runs").glob("auto-*")
    assert sorted(p.name for p in run.glob("training_*.pt")) == ["training_checkpoint_2.pt"]
    train(args, name="other", handle_signals=False)  # a newer run of another experiment: not it
    train(args + ["--resume_path", "auto", "--epochs", "2"], name="auto", handle_signals=False)
    assert list((tmp_path / "runs").glob("auto-*")) == [run]  # continued in that run folder
    assert (run / "training_checkpoint_4.pt").is_file()
    # the newest cut short (a full disk): skipped with a warning, the one before it is used
    newest = run / "training_checkpoint_4.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    caplog.clear()
    caplog.set_level(logging.INFO)
    train(args + ["--resume_path", "auto", "--epochs", "3"], name="auto", handle_signals=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping" in m and "training_checkpoint_4.pt" in m for m in messages)
    assert any("resuming from" in m and "training_checkpoint_2.pt" in m for m in messages)
    assert (run / "training_checkpoint_6.pt").is_file() and not errors(caplog)


def test_resume_auto_needs_an_explicit_output_dir(tmp_path, caplog, synthetic_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_args(tmp_path, synthetic_root) + ["--resume_path", "auto"],
              handle_signals=False)
    assert exit_info.value.code == 2
    assert "--resume_path auto" in one_error(caplog) and "--output_dir" in one_error(caplog)
    assert not (tmp_path / "runs").exists()


def test_several_processes_follow_rank_0s_checkpoint(tmp_path):
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    for folder, iteration in zip(folders, (4, 9)):
        (folder / "auto-1").mkdir(parents=True)
        torch.save({"model_state_dict": {}, "model_architecture": "tiny", "embedding_dimension": 8},
                   folder / "auto-1" / f"training_checkpoint_{iteration}.pt")
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port(),
                        start_method=START_METHOD) as parallel:
        parallel.run(agreed_worker, [str(f) for f in folders], str(tmp_path))  # rank r: folders[r]
    chosen = str(folders[0] / "auto-1" / "training_checkpoint_4.pt")
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [chosen, chosen]
