"""Resume owned by the samplers: their ``state_dict`` (seed, epoch, position) follows a real
Ignite trainer, goes into the checkpoint, and continues the epoch exactly with any number of
processes; a checkpoint without it (older files) gives the same position from the iteration."""
import io

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import DataLoader

from conftest import copy_subset
from faceignite.checkpoint import TrainingState
from faceignite.config import options_group, parse_args, plain_config
from faceignite.data import DataOptions, build_face_data
from faceignite.data.index import index_digest, load_or_build_index
from faceignite.data.pk_sampler import PKSampler
from faceignite.data.sampler import EpochSampler, follow_trainer
from faceignite.engine import create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.optim import build_optimizers


class Keys(torch.utils.data.Dataset):
    """Returns the sampler's ``(index, seed)`` key itself, so batches show what was drawn."""

    def __getitem__(self, key):
        return torch.tensor(key)

    def __len__(self):
        return 0


def record_run(sampler, batch_size, max_epochs, stop_at=None, trainer_state=None):
    """Batches (lists of keys) a real Ignite engine took from a loader on ``sampler``, keyed by
    the iteration; optionally stop after iteration ``stop_at`` or start from ``trainer_state``."""
    loader = DataLoader(Keys(), batch_size=batch_size, sampler=sampler)
    seen = {}
    engine = Engine(lambda e, batch: seen.__setitem__(e.state.iteration,
                                                      [tuple(k) for k in batch.tolist()]))
    follow_trainer(engine)
    if stop_at:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at),
                                 lambda e: e.terminate())
    if trainer_state:
        engine.load_state_dict(trainer_state)
    engine.run(loader, max_epochs=max_epochs)
    return seen, engine


def round_trip(state):
    """Through a file loaded as checkpoints are (weights only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_epoch_sampler_state_continues_the_epoch_with_another_number_of_processes():
    def make(world=1, rank=0):
        return EpochSampler(24, seed=3, num_replicas=world, rank=rank)

    batch = 4  # of all processes together
    full, _ = record_run(make(), batch, max_epochs=2)
    assert len(full) == 12  # 6 steps an epoch
    # two processes stopped after step 2 of epoch 2 (iteration 8): each step, the single
    # process's batch shared out
    samplers = [make(2, rank) for rank in (0, 1)]
    runs = [record_run(s, batch // 2, max_epochs=2, stop_at=8) for s in samplers]
    for it in range(1, 9):
        assert sorted(runs[0][0][it] + runs[1][0][it]) == sorted(full[it]), it
    saved = round_trip(samplers[0].state_dict())
    assert saved == samplers[1].state_dict() == {"seed": 3, "epoch": 1, "position": 2 * batch}
    trainer_state = runs[0][1].state_dict()
    # one process takes over from the two: the rest of epoch 2 as the uninterrupted run
    single = make()
    single.load_state_dict(saved)
    resumed, engine = record_run(single, batch, max_epochs=2, trainer_state=trainer_state)
    assert resumed == {it: full[it] for it in range(9, 13)}
    assert single.state_dict() == {"seed": 3, "epoch": 1, "position": 24}
    # and two processes take over from one
    one = make()
    _, stopped = record_run(one, batch, max_epochs=2, stop_at=8)
    two = [make(2, rank) for rank in (0, 1)]
    rest = []
    for sampler in two:
        sampler.load_state_dict(round_trip(one.state_dict()))
        rest.append(record_run(sampler, batch // 2, max_epochs=2,
                               trainer_state=stopped.state_dict())[0])
    for it in range(9, 13):
        assert sorted(rest[0][it] + rest[1][it]) == sorted(full[it]), it
    # a further epoch starts at its beginning
    more, _ = record_run(make(), batch, max_epochs=3)
    third, _ = record_run(single, batch, max_epochs=3, trainer_state=engine.state_dict())
    assert third == {it: more[it] for it in range(13, 19)}


def test_pk_sampler_state_continues_the_epoch_in_whole_batches():
    labels = [i // 4 for i in range(24)]  # 6 identities x 4 images: 6 batches of P=2 x K=2
    for rank in (0, 1):
        full, _ = record_run(PKSampler(labels, 2, 2, seed=3, num_replicas=2, rank=rank), 4, 2)
        assert len(full) == 6  # 3 batches an epoch for each of 2 processes
        sampler = PKSampler(labels, 2, 2, seed=3, num_replicas=2, rank=rank)
        _, stopped = record_run(sampler, 4, 2, stop_at=4)
        saved = round_trip(sampler.state_dict())
        assert saved == {"seed": 3, "epoch": 1, "position": 8}  # 1 batch of each process
        again = PKSampler(labels, 2, 2, seed=3, num_replicas=2, rank=rank)
        again.load_state_dict(saved)
        assert len(again) == 2 * 4
        resumed, _ = record_run(again, 4, 2, trainer_state=stopped.state_dict())
        assert resumed == {5: full[5], 6: full[6]}


def test_checkpoint_carries_the_sampler_and_older_files_resume_from_the_iteration(
        synthetic_root, tmp_path):
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path / "faces", identities=4, images=4)
    cfg = parse_args(["--dataroot", str(root), "--output_dir", str(tmp_path / "out"),
                      "--image_size", "32", "--batch_size", "4", "--epochs", "2",
                      "--valid_split", "0.25", "--num_workers", "0", "--clearml", "off",
                      "--device", "cpu"])

    def build():
        torch.manual_seed(0)
        data = build_face_data(options_group(cfg, DataOptions))
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16))
        criterion = SoftmaxCenterLoss(data.num_classes, 16)
        optimizers = build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5)
        trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
        return TrainingState(trainer, model, criterion, optimizers, None, data, plain_config(cfg))

    state = build()
    loader = state.data.train_loader
    assert len(loader) == 3  # 12 training images, batch 4
    state.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5),
                                    lambda e: e.terminate())
    state.trainer.run(loader, max_epochs=2)
    ckpt = round_trip(state.state_dict())
    assert ckpt["sampler_state_dict"] == {"seed": cfg.seed, "epoch": 1, "position": 8}
    index = state.data.index
    assert ckpt["split"]["index_digest"] == index_digest(index.classes, index.files)
    assert index_digest(index.classes, index.files) == index_digest(
        *(lambda i: (i.classes, i.files))(load_or_build_index(str(root))))

    restored = {}
    for name, drop in (("with", False), ("without", True)):
        other = build()
        old = dict(ckpt)
        if drop:
            del old["sampler_state_dict"]  # a file written before samplers had a state
        other.load_state_dict(old)
        sampler = other.data.train_loader.sampler
        restored[name] = (sampler.state_dict(), len(sampler), list(sampler))
    assert restored["with"] == restored["without"]
    position, remaining, keys = restored["with"]
    assert position == ckpt["sampler_state_dict"] and remaining == 12 - 8
    fresh = EpochSampler(12, seed=cfg.seed)
    fresh.set_epoch(1)
    assert keys == list(fresh)[8:]
