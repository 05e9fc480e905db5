"""Face backbones (iResNet, MobileFaceNet): published sizes, forward and backward at 112×112, the
one registry, checkpoints/export/ONNX with them, and a short real-face MobileFaceNet run."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_path
from faceignite.config import get_args_parser
from faceignite.errors import FaceIgniteError
from faceignite.export import model_from_weights
from faceignite.models import ARCHITECTURES, EmbeddingNet, build_model, check_image_size

# Published parameter counts in millions (512-d head for iResNet, 128-d for MobileFaceNet):
# ArcFace/insightface iResNets, Chen et al. 2018 (0.99 M).
PUBLISHED = {"iresnet18": (512, 24.0), "iresnet34": (512, 34.1), "iresnet50": (512, 43.6),
             "iresnet100": (512, 65.2), "mobilefacenet": (128, 0.99)}


def n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("architecture", sorted(PUBLISHED))
def test_parameter_count_is_the_published_one(architecture):
    dim, millions = PUBLISHED[architecture]
    with torch.device("meta"):  # counted, not initialised
        model = build_model(architecture, dim)
    assert model.architecture == architecture and model.embedding_dim == dim
    assert abs(n_params(model) - millions) / millions < 0.03, n_params(model)


@pytest.mark.parametrize("architecture", ["iresnet18", "iresnet34", "iresnet50", "mobilefacenet"])
def test_forward_and_backward_at_112(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, 64).train()
    x = torch.randn(2, 3, 112, 112)
    out = model(x)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    stem = next(model.backbone.parameters())  # the first convolution gets a gradient
    assert stem.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        unit = model.embed(x)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2), atol=1e-5)


def test_mobilefacenet_has_the_layers_of_a_published_checkpoint():
    """The external MobileFaceNet (LFW 99.30 %, 112x96 input) holds the same 333 tensors in the
    same order; only its global depthwise kernel is 7x6 (for 96 px wide input, ours 7x7) and its
    last 1x1 convolution is our Linear (same numbers)."""
    ckpt = shared_path("pretrained", "mobilefacenet_xiaoccer", "068.ckpt")
    theirs = torch.load(ckpt, map_location="cpu", weights_only=True)["net_state_dict"]
    ours = build_model("mobilefacenet", 128).state_dict()
    assert len(theirs) == len(ours)
    differ = [(a, b) for (a, ta), (b, tb) in zip(theirs.items(), ours.items())
              if ta.shape != tb.shape]
    assert [(a, tuple(theirs[a].shape), tuple(ours[b].shape)) for a, b in differ] == [
        ("linear7.conv.weight", (512, 1, 7, 6), (512, 1, 7, 7)),
        ("linear1.conv.weight", (128, 512, 1, 1), (128, 512))]


def test_iresnet100_runs_one_image():
    model = build_model("iresnet100", 512).eval()
    with torch.no_grad():
        out = model.embed(torch.randn(1, 3, 112, 112))
    assert out.shape == (1, 512) and torch.isfinite(out).all()


def test_registry_is_the_one_list_and_keeps_resnet_keys():
    field = {"r18", "r34", "r50", "r100", "r200", "iresnet200", "mbf", "inception_resnet_v1"}
    assert set(PUBLISHED) | field | {"resnet34", "resnet50", "resnet101", "vgg16", "vgg16_bn",
                                     "tiny"} == set(ARCHITECTURES)  # test_field_weights.py
    action = next(a for a in get_args_parser()._actions if a.dest == "model")
    assert tuple(action.choices) == ARCHITECTURES  # --model offers every registered network
    # checkpoints written before the package keep loading: same class, same keys (networks
    # built on the meta device: names and shapes, no initialising)
    with torch.device("meta"):
        model = build_model("resnet34", 32)
        assert type(model) is EmbeddingNet
        from torchvision.models import resnet34

        expected = {f"backbone.{k}" for k in resnet34().state_dict()
                    if not k.startswith("fc.")}
        expected |= {"embedding.0.weight", "embedding.1.weight", "embedding.1.bias",
                     "embedding.1.running_mean", "embedding.1.running_var",
                     "embedding.1.num_batches_tracked"}
        assert set(model.state_dict()) == expected
        for name in PUBLISHED:  # --finetune copies backbone.*; the head is embedding.*
            keys = build_model(name, 8).state_dict()
            assert all(k.startswith(("backbone.", "embedding.")) for k in keys)


def test_wrong_image_size_is_one_line_naming_the_option():
    check_image_size("resnet34", 160)          # any size for the torchvision ResNets
    check_image_size("mobilefacenet", 112)
    with pytest.raises(FaceIgniteError, match=r"--image_size 112") as err:
        build_model("iresnet50", 512, image_size=160)
    assert "\n" not in str(err.value)
    model = build_model("mobilefacenet", 16).eval()
    with pytest.raises(FaceIgniteError, match=r"112x112 images, got \(96, 96\)"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(FaceIgniteError, match="unknown architecture 'iresnet20'"):
        build_model("iresnet20")


def test_checkpoint_weights_and_pretrained_file_rebuild_a_face_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilefacenet", 32).eval()
    x = torch.randn(2, 3, 112, 112)
    rebuilt = model_from_weights("mobilefacenet", 32, model.state_dict(), "test")
    with torch.no_grad():
        assert torch.allclose(rebuilt.embed(x), model.embed(x), atol=1e-6)
    with pytest.raises(FaceIgniteError, match="do not fit iresnet18"):
        model_from_weights("iresnet18", 32, model.state_dict(), "test")
    # --pretrained FILE: backbone weights (keys with the backbone. prefix) into a new head size
    weights = tmp_path / "mbf.pt"
    torch.save(model.state_dict(), weights)
    other = build_model("mobilefacenet", 64, pretrained=str(weights))
    assert torch.equal(other.state_dict()["backbone.features.0.0.weight"],
                       model.state_dict()["backbone.features.0.0.weight"])
    with pytest.raises(FaceIgniteError, match="no ImageNet weights exist for mobilefacenet"):
        build_model("mobilefacenet", 64, pretrained="download")
    with pytest.raises(FaceIgniteError, match="does not fit iresnet18"):
        build_model("iresnet18", 64, pretrained=str(weights))


def test_onnx_export_of_mobilefacenet_matches_pytorch(tmp_path):
    pytest.importorskip("onnx", reason="pip install onnx onnxscript")
    pytest.importorskip("onnxscript", reason="pip install onnx onnxscript")
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    from faceignite.onnx_export import check_onnx, main

    torch.manual_seed(0)
    model = build_model("mobilefacenet", 128).eval()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "mobilefacenet",
                "embedding_dimension": 128, "image_size": 112}, checkpoint)
    out = main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "mbf.onnx")])
    for n in (1, 3):  # dynamic batch axis
        assert check_onnx(model, out, torch.randn(n, 3, 112, 112), atol=1e-4) < 1e-4


# ----------------------------------------------------------------------------- real faces
TRAIN_IDS, PER_ID, HELD_OUT_IDS, MIN_IMAGES, EPOCHS, SEED = 12, 16, 30, 19, 4, 1


@pytest.mark.slow  # trains MobileFaceNet at 112 px on 12 CelebA identities
def test_short_celeba_run_of_mobilefacenet_beats_its_untrained_self(tmp_path):
    """As tests/test_real_faces.py, at the 112 px MobileFaceNet needs, on fewer images."""
    from faceignite.verification import create_pairs_evaluator, read_pairs
    from faceignite.verification.make_pairs import make_pairs_set

    from handlers.training import main as train

    celeba = shared_path("celeba_subset", "aligned-160")
    ids = sorted(d for d in os.listdir(celeba) if len(os.listdir(celeba / d)) >= MIN_IMAGES)
    np.random.default_rng(0).shuffle(ids)
    held_out, trained_on = ids[:HELD_OUT_IDS], ids[HELD_OUT_IDS:HELD_OUT_IDS + TRAIN_IDS]
    for ident in trained_on:
        (tmp_path / "train" / ident).mkdir(parents=True)
        for name in sorted(os.listdir(celeba / ident))[:PER_ID]:
            shutil.copy(celeba / ident / name, tmp_path / "train" / ident / name)
    pairs_file = make_pairs_set(str(celeba), str(tmp_path / "pairs"), held_out, folds=2,
                                per_fold=40, seed=0)
    assert len(read_pairs(pairs_file)) == 160

    torch.manual_seed(SEED)
    untrained = build_model("mobilefacenet", 128).eval()
    before = create_pairs_evaluator(untrained.embed, str(tmp_path / "pairs"), torch.device("cpu"),
                                    112).run()
    metrics = train(["--dataroot", str(tmp_path / "train"), "--lfw", str(tmp_path / "pairs"),
                     "--model", "mobilefacenet", "--embedding_dim", "128", "--image_size", "112",
                     "--epochs", str(EPOCHS), "--seed", str(SEED), "--optimizer", "adam",
                     "--lr", "0.001", "--lr_scheduler", "cosine", "--warmup_epochs", "0",
                     "--batch_size", "16", "--valid_split", "0", "--weight_decay", "0",
                     "--center_loss_weight", "0.01",  # the weight this test was set up with
                     "--lfw_validation_epoch_interval", str(EPOCHS), "--num_workers", "0",
                     "--device", "cpu", "--clearml", "off", "--output_dir", str(tmp_path / "runs")],
                    name="celeba_mobilefacenet")
    # batches of 16 (48 steps, not 24 of 32), a gentle lr and no weight decay (with Adam it
    # shrinks BN-scaled weights by ~lr per step): BatchNorm's running statistics, which
    # evaluation uses, must catch up with the batch statistics training used
    print(f"untrained: {before.summary()}\ntrained:   accuracy {metrics['lfw_accuracy']:.4f} "
          f"AUC {metrics['lfw_auc']:.4f}")
    assert metrics["train_accuracy"] > 3 / TRAIN_IDS  # it fits the training identities
    # AUC, not accuracy: at 160 pairs a best-threshold accuracy moves in steps of 0.6 points and
    # follows the machine's rounding (it rose 3 points on one machine and fell 0.6 on another of
    # the same kind, where AUC still rose 0.07); accuracy in equal time is bench/'s question
    assert metrics["lfw_auc"] >= before.auc + 0.05


def test_tiny_network_is_test_size_and_takes_any_input():
    model = build_model("tiny", 128).eval()
    assert sum(p.numel() for p in model.parameters()) < 50_000
    with torch.no_grad():
        for side in (32, 64, 112):
            out = model.embed(torch.randn(2, 3, side, side))
            assert out.shape == (2, 128) and torch.allclose(out.norm(dim=1), torch.ones(2))
