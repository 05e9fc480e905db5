"""Fine-tuning a loaded network: ``--backbone_lr_scale`` keeps the network at that fraction of
the classifier's LR through warm-up and steps; ``--augment`` defaults by crop type; the fine-tune
recipe starts from an arcface_torch file and records its input convention in the checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from faceignite.checkpoint import load_checkpoint
from faceignite.config import default_augment, parse_args
from faceignite.data.crop_mark import write_template_mark
from faceignite.errors import FaceIgniteError
from faceignite.losses import SoftmaxCenterLoss, TripletLoss
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from handlers import lr_scheduler

REPO = Path(__file__).resolve().parents[1]


def test_backbone_lr_scale_follows_the_schedule():
    model = build_model("tiny", 16)
    criterion = SoftmaxCenterLoss(5, 16)
    optimizer = build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5,
                                 backbone_lr_scale=0.1)["model"]
    engine = Engine(lambda e, b: None)
    lr_scheduler.attach(engine, optimizer, 0.1, 4, 5, schedule="multistep", warmup_epochs=1,
                        milestones=[0.5], step_epochs=1, gamma=0.1)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        [g["lr"] for g in optimizer.param_groups]))
    engine.run(range(5), max_epochs=4)
    heads = [lrs[-1] for lrs in seen]
    assert heads[0] < heads[6] and heads[-1] == pytest.approx(0.01)  # warm-up, then the step
    for lrs in seen:  # the network's two groups, at a tenth of the head's, every iteration
        assert lrs[0] == pytest.approx(0.1 * lrs[-1]) and lrs[1] == pytest.approx(0.1 * lrs[-1])
    assert len(build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5)["model"]
               .param_groups) == 2  # scale 1: the layout of earlier checkpoints
    with pytest.raises(FaceIgniteError, match="needs a loss with a classifier"):
        build_optimizers(model, TripletLoss(), "sgd", 0.1, 0.9, 5e-4, 0.5, backbone_lr_scale=0.5)


def test_augment_and_normalize_defaults(tmp_path):
    folder = tmp_path / "faces"
    (folder / "a").mkdir(parents=True)
    assert default_augment(str(folder)) == "box" and default_augment(None) == "box"
    write_template_mark(str(folder), "arcface", 112)  # as python -m faceignite.align writes it
    assert default_augment(str(folder)) == "flip"
    cfg = parse_args(["--dataroot", str(folder), "--model", "r50"])
    assert (cfg.augment, cfg.normalize) == ("flip", "insightface")
    cfg = parse_args(["--model", "inception_resnet_v1", "--augment", "none",
                      "--normalize", "127.5,128"])
    assert (cfg.augment, cfg.normalize) == ("none", "127.5,128")
    assert parse_args([]).normalize == "imagenet"  # resnet34
    with pytest.raises(FaceIgniteError, match="--normalize 127.5: use insightface"):
        parse_args(["--normalize", "127.5"])


@pytest.mark.slow
def test_finetune_recipe_from_an_arcface_torch_file(tmp_path):
    """experiments/r50_finetune.py's options with insightface's mbf (faster on a CPU): the
    file's network trains under a new ArcFace head; the run records its input convention."""
    import runpy
    import sys

    from conftest import copy_subset, shared_path
    from test_field_weights import insightface_get_model

    faces = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "faces", 4, 4)
    write_template_mark(str(faces), "arcface", 112)
    reference = insightface_get_model("mbf")
    weights = tmp_path / "model.pt"
    torch.save(reference.state_dict(), weights)
    argv = ["--dataroot", str(faces), "--model", "mbf", "--pretrained", str(weights),
            "--epochs", "1", "--batch_size", "8", "--valid_split", "0", "--num_workers", "0",
            "--clearml", "off", "--device", "cpu", "--output_dir", str(tmp_path / "runs")]
    old_argv = sys.argv
    sys.argv = ["experiments/r50_finetune.py", *argv]
    try:
        runpy.run_path(str(REPO / "experiments" / "r50_finetune.py"), run_name="__main__")
    finally:
        sys.argv = old_argv
    ckpt = load_checkpoint(str(next((tmp_path / "runs").glob("r50_finetune-*"))))
    config = ckpt["config"]
    assert (config["normalize"], config["augment"], config["backbone_lr_scale"]) == \
        ("insightface", "flip", 0.1)
    trained = ckpt["model_state_dict"]["backbone.conv_sep.layers.0.weight"]
    start = reference.state_dict()["conv_sep.layers.0.weight"]
    assert not torch.equal(trained, start) and torch.allclose(trained, start, atol=1e-2)
