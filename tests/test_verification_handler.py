"""The verification handler with one LFW-format target (``--lfw``) on real Ignite engines over the built-in LFW-format pairs set (real JPEGs)."""
from __future__ import annotations

import logging
import math
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from faceignite.errors import FaceIgniteError
from faceignite.verification import create_embedding_engine, create_pairs_evaluator, image_loader
from faceignite.verification.targets import TargetSpec
from handlers import events, verification

from handlers.standard import main

CONTRACT = ("lfw_accuracy", "lfw_accuracy_std", "lfw_threshold", "lfw_val_far1e-3",
            "lfw_val_far1e-2", "lfw_auc", "lfw_eer")


def attach_lfw(trainer, model, lfw_dir, device, image_size, *, pairs_file=None,
               skip_missing=False, prefix="lfw", batch_size=128, **options):
    """``handlers.verification.attach`` with the one target ``--lfw lfw_dir`` (as the standard
    run builds it); returns that target's evaluator."""
    target = TargetSpec(prefix, lfw_dir, pairs_file, skip_missing).load()
    evaluators = verification.attach(trainer, model, [target], device, image_size,
                                     batch_size=batch_size, **options)
    return evaluators[prefix]


class PixelProjection:
    """A fixed random linear map of the pixels: a real (weak) embedding, cheap on a CPU."""

    def __init__(self, size: int = 32, dim: int = 16):
        self.weight = torch.randn(3 * size * size, dim, generator=torch.Generator().manual_seed(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


@pytest.fixture
def pairs_root(synthetic_root):
    return str(synthetic_root[1])


def idle_trainer() -> Engine:
    """A real trainer whose step leaves the model alone (the handler is what is tested)."""
    return Engine(lambda engine, batch: {"loss": torch.tensor(0.1)})


def record_validations(trainer: Engine) -> list[tuple[int, int, dict]]:
    seen: list[tuple[int, int, dict]] = []

    @trainer.on(events.ValidationEvents.VERIFICATION_COMPLETED)
    def record(engine: Engine) -> None:
        seen.append((engine.state.epoch, engine.state.iteration,
                     {k: engine.state.metrics[k] for k in CONTRACT}))

    return seen


def assert_png(path: str) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(path)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 10  # a drawn figure, not a blank canvas


def test_every_n_epochs_and_the_last_with_metrics_events_and_roc_pngs(pairs_root, tmp_path):
    trainer = idle_trainer()
    attach_lfw(trainer, PixelProjection(), pairs_root, "cpu", 32, every_epochs=2,
               batch_size=64, flip=False, distance="l2", output_dir=str(tmp_path))
    seen = record_validations(trainer)
    figures: list[str] = []
    trainer.add_event_handler(events.ValidationEvents.VERIFICATION_COMPLETED,
                              lambda e: figures.append(e.state.metrics["lfw_roc_figure"]))
    trainer.run([0] * 4, max_epochs=5)
    assert [(e, i) for e, i, _ in seen] == [(2, 8), (4, 16), (5, 20)]
    for _, _, metrics in seen:
        # TAR at a FAR the impostor pairs cannot resolve is None (n/a), the rest finite
        assert metrics["lfw_val_far1e-3"] is None  # 270 impostor pairs per threshold
        assert all(math.isfinite(v) for k, v in metrics.items() if k != "lfw_val_far1e-3")
        assert 0.5 <= metrics["lfw_accuracy"] <= 1 and 0 <= metrics["lfw_eer"] <= 0.5
    assert [p.rsplit("/", 1)[1] for p in figures] == [
        "roc_lfw_epoch002_iter0000008.png", "roc_lfw_epoch004_iter0000016.png",
        "roc_lfw_epoch005_iter0000020.png"]
    for path in figures:
        assert path.startswith(str(tmp_path))
        assert_png(path)


def test_iteration_interval_and_a_run_stopped_mid_epoch(pairs_root):
    trainer = idle_trainer()
    attach_lfw(trainer, PixelProjection(), pairs_root, "cpu", 32, every_epochs=10,
               every_iterations=3, batch_size=128, flip=False, distance="l2")
    seen = record_validations(trainer)
    trainer.run([0] * 4, max_epochs=2)
    assert [(e, i) for e, i, _ in seen] == [(1, 3), (2, 6), (2, 8)]
    assert "lfw_roc_figure" not in trainer.state.metrics  # no output_dir: no PNG

    trainer = idle_trainer()
    attach_lfw(trainer, PixelProjection(), pairs_root, "cpu", 32, batch_size=128, every_epochs=1,
               flip=False, distance="l2")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.terminate())
    seen = record_validations(trainer)
    trainer.run([0] * 4, max_epochs=3)
    assert [(e, i) for e, i, _ in seen] == [(1, 4), (2, 6)]  # epoch 1, then the final state


def test_each_unique_image_embedded_once(pairs_root):
    evaluator = create_pairs_evaluator(PixelProjection(), pairs_root, "cpu", 32, batch_size=50)
    embedded = []
    evaluator.engine.add_event_handler(Events.ITERATION_COMPLETED,
                                       lambda e: embedded.extend(e.state.output[1].tolist()))
    result = evaluator.run()
    assert sorted(embedded) == list(range(len(evaluator.pairs.keys)))
    assert len(embedded) < 2 * result.num_pairs * 0.25  # 600 pairs (1,200 slots) on 239 images
    assert result.num_pairs == 600 and result.num_folds == 10


def test_flip_tta_makes_an_image_and_its_mirror_embed_alike(pairs_root, tmp_path):
    image = cv2.imread(f"{pairs_root}/Synthetic_Person000/Synthetic_Person000_0001.jpg")
    paths = [str(tmp_path / "a.png"), str(tmp_path / "mirror.png")]
    cv2.imwrite(paths[0], image)
    cv2.imwrite(paths[1], image[:, ::-1])
    model = PixelProjection()
    for flip in (False, True):
        engine = create_embedding_engine(model, torch.device("cpu"), flip=flip)
        engine.run(image_loader(paths, 32, 2))
        emb, index = engine.state.output
        assert index.tolist() == [0, 1]
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(emb[0], emb[1], atol=1e-4) == flip


def test_undecodable_image_fails_before_training_unless_skip_missing(pairs_root, tmp_path,
                                                                     caplog):
    """Issue 30 item 2: every image is decoded when the target is attached; one that does not
    decode fails there (a pair dropped is no longer the protocol), or with skip_missing its
    pairs are dropped before training and counted.  One that goes bad while the run goes on is
    skipped and counted; a plain evaluation fails on it."""
    root = tmp_path / "lfw"
    shutil.copytree(pairs_root, root)
    bad = root / "Synthetic_Person001" / "Synthetic_Person001_0002.jpg"
    good = bad.read_bytes()
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FaceIgniteError, match=f"{bad} of pair on line .* does not decode"):
        attach_lfw(idle_trainer(), PixelProjection(), str(root), "cpu", 32, batch_size=128,
                   every_epochs=1, flip=False, distance="l2")
    trainer = idle_trainer()
    with caplog.at_level(logging.INFO):
        attach_lfw(trainer, PixelProjection(), str(root), "cpu", 32, batch_size=128,
                   every_epochs=1, flip=False, distance="l2", skip_missing=True)
        trainer.run([0] * 2, max_epochs=1)
    assert "verification target lfw: 6 of 600 pairs dropped before training" in caplog.text
    assert "lfw_accuracy" in trainer.state.metrics
    assert re.search(r"lfw  epoch 1 .* (\d+) pairs skipped", caplog.text)

    bad.write_bytes(good)  # decodes when attached, goes bad before the validation
    trainer = idle_trainer()
    attach_lfw(trainer, PixelProjection(), str(root), "cpu", 32, batch_size=128, every_epochs=1,
               flip=False, distance="l2")
    bad.write_bytes(b"not a jpeg")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer.run([0] * 2, max_epochs=1)
    assert "1 of 240 images missing (truncated, undecodable or removed: each named above)" in caplog.text
    assert str(bad) in caplog.text and "lfw_accuracy" in trainer.state.metrics

    evaluator = create_pairs_evaluator(PixelProjection(), str(root), "cpu", 32)
    with pytest.raises(FaceIgniteError, match=f"1 of 240 images .* undecodable.*{bad}"):
        evaluator.run()


def test_bad_lfw_folder_fails_at_attach_before_training(tmp_path):
    trainer = idle_trainer()
    with pytest.raises(FaceIgniteError, match="no pairs file in"):
        attach_lfw(trainer, PixelProjection(), str(tmp_path), "cpu", 32, batch_size=128,
                   every_epochs=1, flip=False, distance="l2")


def test_recipe_validates_on_the_pairs_set_and_plots(pairs_root, synthetic_root, tmp_path):
    train = tmp_path / "train"
    for person in sorted(p for p in synthetic_root[0].iterdir() if p.is_dir())[:3]:
        (train / person.name).mkdir(parents=True)
        for image in sorted(person.iterdir())[:4]:
            shutil.copy(image, train / person.name / image.name)
    metrics = main(["--dataroot", str(train), "--lfw", pairs_root, "--output_dir",
                    str(tmp_path / "runs"), "--model", "tiny", "--image_size", "32",
                    "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--valid_split", "0.25",
                    "--num_workers", "0",
                    "--clearml", "off", "--device", "cpu"])
    # the built-in set's 270 impostor pairs per threshold cannot resolve FAR 1e-3: n/a (None)
    assert metrics["lfw_val_far1e-3"] is None
    assert all(math.isfinite(metrics[k]) for k in CONTRACT if k != "lfw_val_far1e-3")
    pngs = list((tmp_path / "runs").glob("*/roc_lfw_epoch001_iter*.png"))
    assert len(pngs) == 1
    assert_png(str(pngs[0]))
    assert np.isfinite(metrics["lfw_threshold"]) and 0 < metrics["lfw_auc"] <= 1


def test_the_former_module_names_still_import():
    """``handlers.standard`` (the standard run's former module) and ``faceignite.lfw`` (the
    verification package's former name) are aliases of what replaced them."""
    import faceignite.lfw.evaluator
    import faceignite.verification.evaluator
    import handlers.standard
    import handlers.training

    assert handlers.standard.main is handlers.training.main
    assert faceignite.lfw.evaluator is faceignite.verification.evaluator
    assert events.ValidationEvents.LFW_COMPLETED is events.ValidationEvents.VERIFICATION_COMPLETED
