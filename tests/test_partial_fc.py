"""Partial FC on 2 real gloo processes (CPU): the sharded criterion against the single-process
SoftmaxCenterLoss / ArcFace / CosFace on the same global batch, class sampling, training on real
faces, and full-state checkpoints moving between 2 processes and 1."""
from __future__ import annotations

import os
import socket

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from ignite.engine import Events
from PIL import Image

from conftest import START_METHOD, shared_path

import partial_fc_memory  # noqa: E402  (bench/ is on pytest's pythonpath)

from faceignite.engine import create_trainer  # noqa: E402
from faceignite.errors import FaceIgniteError  # noqa: E402
from faceignite.losses import ArcFace, CosFace, PartialFC, SoftmaxCenterLoss  # noqa: E402
from faceignite.losses.partial_fc import gather_rows, shard_range  # noqa: E402
from faceignite.optim import build_optimizers  # noqa: E402

C, D = 7, 8  # 7 classes on 2 processes: shards of 4 and 3 rows
SIZES = (7, 5)  # uneven per-process batches: 12 images in the global batch
EMPTY_RANK1 = (12, 0)  # rank 1's images all failed to decode
CASES = ((SIZES, False), (SIZES, True), (EMPTY_RANK1, False))
HEADS = {"softmax": dict(center_loss_weight=0.1, label_smoothing=0.1), "arcface": {},
         "cosface": {}}
IDENTITIES, IMAGES, PIXELS = 16, 6, 20  # the real-face training set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(head: str) -> torch.nn.Module:
    """The unsharded criterion, with the same seeded weights in every process."""
    torch.manual_seed(3)
    if head == "softmax":
        return SoftmaxCenterLoss(C, D, **HEADS["softmax"])
    return {"arcface": ArcFace, "cosface": CosFace}[head](C, D)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(11)
    return (torch.from_numpy(rng.normal(size=(sum(SIZES), D))).float(),
            torch.from_numpy(rng.integers(0, C, sum(SIZES))).long())


def local_rows(rank: int, sizes: tuple[int, ...] = SIZES) -> slice:
    return slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))


def face_set(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IDENTITIES x IMAGES real aligned faces, PIXELS px, flattened, standardised."""
    images, labels = [], []
    for label, ident in enumerate(sorted(os.listdir(root))[:IDENTITIES]):
        for name in sorted(os.listdir(os.path.join(root, ident)))[:IMAGES]:
            with Image.open(os.path.join(root, ident, name)) as im:
                images.append(np.asarray(im.convert("RGB").resize((PIXELS, PIXELS)), np.float32))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).flatten(1)
    return (x - x.mean()) / x.std(), torch.tensor(labels)


# --------------------------------------------------------------------------- in each process
def equality_checks(rank: int) -> dict:
    """Each head at sample rate 1: loss, statistics and this process's gradients."""
    embeddings, labels = global_batch()
    results = {}
    for head, options in HEADS.items():
        # (sizes, ddp_model): uneven batches with and without DDP's x2; rank 1 without images
        for sizes, ddp_model in CASES:
            crit = PartialFC(C, D, head, ddp_model=ddp_model, **options)
            crit.load_full_state_dict(reference(head).state_dict())
            mine = embeddings[local_rows(rank, sizes)].clone().requires_grad_()
            out = crit(mine, labels[local_rows(rank, sizes)])
            out["loss"].backward()
            grads = {k: gather_rows(p.grad, C, chunk_rows=3)  # chunks of 3 rows: 2 gathers
                     for k, p in crit.named_parameters()}
            crit.eval()  # held-out evaluation: per-row cross-entropy and correctness
            rows = crit.row_statistics(mine, labels[local_rows(rank, sizes)])
            results[head, sizes, ddp_model] = {
                "stats": {k: v.detach() for k, v in out.items()},
                "embedding_grad": mine.grad, "param_grads": grads, "rows": rows}
    return results


def sampling_checks(rank: int) -> list[dict]:
    """Sample rate 0.5 over 40 classes: 10 rows of each 20-row shard per step."""
    crit = PartialFC(40, D, "arcface", sample_rate=0.5)
    steps = []
    for step in range(30):
        gen = torch.Generator().manual_seed(step)  # the same global batch in both processes
        labels = torch.randint(0, 40, (8,), generator=gen)
        embeddings = torch.randn(8, D, generator=gen)
        crit.zero_grad()
        crit(embeddings[rank * 4:rank * 4 + 4], labels[rank * 4:rank * 4 + 4])["loss"].backward()
        steps.append({"labels": labels, "sample": crit.last_sample + crit.class_start,
                      "rows_with_grad": crit.weight.grad.abs().sum(1).nonzero().squeeze(1)
                      + crit.class_start})
    return steps


def train_on_faces(rank: int, root: str, out_dir: str) -> dict:
    """A linear embedding (DDP) + Partial FC at sample rate 0.5, through the project's trainer
    and optimizers; the full-set loss before and after 200 steps."""
    x, y = face_set(root)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 32)
    criterion = PartialFC(IDENTITIES, 32, "softmax", center_loss_weight=0.01, sample_rate=0.5)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizers = build_optimizers(model, criterion, "sgd", lr=0.01, momentum=0.9,
                                  weight_decay=5e-4, center_loss_lr=0.5)

    def full_set_loss() -> tuple[float, float]:
        criterion.eval()
        with torch.no_grad():
            half = x.shape[0] // 2
            rows = slice(rank * half, (rank + 1) * half)
            out = criterion(ddp(x[rows]), y[rows])
        criterion.train()
        return float(out["loss"]), float(out["accuracy"])

    gen = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(200):
        pick = torch.randperm(x.shape[0], generator=gen)[:16]
        mine = pick[rank * 8:rank * 8 + 8]
        batches.append((x[mine], y[mine], 0))
    trainer = create_trainer(ddp, criterion, optimizers, torch.device("cpu"))
    accuracies = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: accuracies.append(float(e.state.output["accuracy"])))
    before = full_set_loss()
    trainer.run(batches, max_epochs=1)
    after = full_set_loss()
    full = criterion.full_state_dict()
    optim = criterion.full_optimizer_state_dict(optimizers["model"])
    torch.save({"model": model.state_dict(), "local": criterion.state_dict(),
                "local_optim": optimizers["model"].state_dict(), "full": full,
                "full_optim": optim}, os.path.join(out_dir, f"trained-rank{rank}.pt"))
    return {"before": before, "after": after, "accuracies": accuracies, "rows": criterion.num_local,
            "bytes": partial_fc_memory.measured_bytes(criterion, optimizers)}


def round_trip(rank: int, out_dir: str) -> dict:
    """2 → 1: a random 2-process state gathered; 1 → 2: a saved full state sliced and gathered."""
    torch.manual_seed(100)  # equally seeded processes: still distinct rows (a seed per rank)
    results = {}
    for head in HEADS:
        crit = PartialFC(C, D, head)
        results[f"local_{head}"] = {k: v.clone() for k, v in crit.state_dict().items()}
        results[f"full_{head}"] = crit.full_state_dict(chunk_rows=2)
        saved = torch.load(os.path.join(out_dir, f"single_{head}.pt"), weights_only=True)
        crit.load_full_state_dict(saved)
        results[f"loaded_local_{head}"] = crit.state_dict()
        results[f"regathered_{head}"] = crit.full_state_dict()
    return results


def worker(local_rank: int, root: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = idist.get_rank()
    results = {"equality": equality_checks(rank), "sampling": sampling_checks(rank),
               "round_trip": round_trip(rank, out_dir),
               "train": train_on_faces(rank, root, out_dir),
               "range": (PartialFC(C, D).class_start, PartialFC(C, D).class_stop)}
    torch.save(results, os.path.join(out_dir, f"results-rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One launch of 2 gloo processes running :func:`worker`; each process's results."""
    root = str(shared_path("celeba_subset", "aligned-160"))
    out = tmp_path_factory.mktemp("pfc")
    torch.manual_seed(42)
    singles = {}
    for head in HEADS:  # 1-process states the 2 processes load (1 → 2)
        singles[head] = PartialFC(C, D, head).state_dict()
        torch.save(singles[head], out / f"single_{head}.pt")
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=_free_port(),
                        start_method=START_METHOD) as parallel:
        parallel.run(worker, root, str(out))
    ranks = [torch.load(out / f"results-rank{r}.pt", weights_only=True) for r in (0, 1)]
    return ranks, singles, out


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the checks
def test_shards_split_every_class_once():
    for classes, world in ((7, 2), (10, 3), (8, 8), (2_000_000, 8)):
        ranges = [shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("head", list(HEADS))
def test_sharded_loss_and_gradients_equal_one_process(two_processes, head):
    ranks, _, _ = two_processes
    assert [r["range"] for r in ranks] == [(0, 4), (4, 7)]
    embeddings, labels = global_batch()
    ref = reference(head)
    embeddings.requires_grad_()
    out = ref(embeddings, labels)
    out["loss"].backward()
    accuracy = (out["logits"].argmax(1) == labels).float().mean()
    for rank, result in enumerate(ranks):
        for sizes, ddp_model in CASES:
            got = result["equality"][head, sizes, ddp_model]
            for key in ("loss", "ce", "center", "target_cos"):  # the global value everywhere
                if key in out:
                    close(got["stats"][key], out[key].detach())
            close(got["stats"]["accuracy"], accuracy)
            # the rows this process made; x 2 when DDP will average the model's gradients
            close(got["embedding_grad"],
                  embeddings.grad[local_rows(rank, sizes)] * (2 if ddp_model else 1))
    # classifier and centre gradients, gathered on rank 0 (None on rank 1)
    for case in CASES:
        grads = ranks[0]["equality"][(head, *case)]["param_grads"]
        assert grads.keys() == dict(ref.named_parameters()).keys()
        for name, p in ref.named_parameters():
            close(grads[name], p.grad)
        assert all(g is None for g in ranks[1]["equality"][(head, *case)]["param_grads"]
                   .values())


@pytest.mark.parametrize("head", list(HEADS))
def test_held_out_row_statistics_equal_one_process(two_processes, head):
    """``row_statistics`` (the --partial_fc held-out evaluation): each process's rows' cross-
    entropy of the margin-free logits and correctness equal the unsharded ``logits()``'s."""
    ranks, _, _ = two_processes
    embeddings, labels = global_batch()
    logits = reference(head).logits(embeddings).detach()
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(1) == labels).float()
    assert 0 < correct.mean() < 1  # both outcomes occur
    for sizes, ddp_model in CASES:
        rows = [r["equality"][head, sizes, ddp_model]["rows"] for r in ranks]
        for rank, (loss, right) in enumerate(rows):
            assert loss.shape == (sizes[rank],)
            close(loss, ce[local_rows(rank, sizes)])
            assert torch.equal(right, correct[local_rows(rank, sizes)])


def test_sampling_keeps_every_positive_and_only_sampled_rows_learn(two_processes):
    ranks, _, _ = two_processes
    for rank, result in enumerate(ranks):
        start, stop = shard_range(40, 2, rank)
        sampled_negatives = 0
        for step in result["sampling"]:
            sample = step["sample"]
            positives = {int(c) for c in step["labels"] if start <= c < stop}
            assert len(sample) == 10 and sample.unique().numel() == 10  # R x 20 local rows
            assert torch.equal(sample, sample.sort().values)
            assert ((sample >= start) & (sample < stop)).all()
            assert positives <= {int(c) for c in sample}
            sampled_negatives += 10 - len(positives)
            # unsampled rows got an exactly zero gradient; rows with a gradient were sampled
            assert {int(c) for c in step["rows_with_grad"]} <= {int(c) for c in sample}
        assert sampled_negatives > 0
    # different samples in different steps (random negatives)
    samples = {tuple(s["sample"].tolist()) for s in ranks[0]["sampling"]}
    assert len(samples) > 20


def test_training_at_sample_rate_half_learns_real_faces(two_processes):
    ranks, _, out = two_processes
    train = [r["train"] for r in ranks]
    for key in ("before", "after", "accuracies"):  # the same global numbers in both processes
        assert train[0][key] == train[1][key]
    (loss0, acc0), (loss1, acc1) = train[0]["before"], train[0]["after"]
    assert loss1 < 0.5 * loss0 and acc1 > acc0 + 0.3, train[0]
    assert np.mean(train[0]["accuracies"][-20:]) > np.mean(train[0]["accuracies"][:20])
    for result in train:  # the bench's memory formula, measured on each shard
        assert result["bytes"] == partial_fc_memory.formula_bytes(IDENTITIES, 32, result["rows"])
    saved = [torch.load(out / f"trained-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in saved[0]["model"].items():  # DDP kept the replicas identical
        assert torch.equal(value, saved[1]["model"][key])
    # the full state is the shards in rank order, and only rank 0 holds it
    full, locals_ = saved[0]["full"], [s["local"] for s in saved]
    assert saved[1]["full"] == {} and saved[1]["full_optim"] == {}
    for key in full:
        assert torch.equal(full[key], torch.cat([loc[key] for loc in locals_]))
    # ... and resumes in one process: an unsharded criterion and its optimizer take it as is
    crit = SoftmaxCenterLoss(IDENTITIES, 32)
    crit.load_state_dict(full)
    single = PartialFC(IDENTITIES, 32, "softmax", sample_rate=0.5)
    single.load_full_state_dict(full)
    model = torch.nn.Linear(PIXELS * PIXELS * 3, 32)
    model.load_state_dict(saved[0]["model"])
    optim = build_optimizers(model, single, "sgd", 0.01, 0.9, 5e-4, 0.5)["model"]
    single.load_full_optimizer_state_dict(optim, saved[0]["full_optim"])
    local_momenta = [s["local_optim"]["state"] for s in saved]
    own = single._own_indices(optim)  # the classifier's weight and bias, not the centres
    assert {id(p) for p in own.values()} == {id(p) for p in single.classifier.parameters()}
    for index, p in own.items():  # momentum rows: rank 0's then rank 1's
        expected = torch.cat([m[index]["momentum_buffer"] for m in local_momenta])
        assert torch.equal(optim.state[p]["momentum_buffer"], expected)
    ordered = [p for group in optim.param_groups for p in group["params"]]
    for index, p in enumerate(ordered):  # the model's own state: rank 0's, as it was
        if index not in own:
            assert torch.equal(optim.state[p]["momentum_buffer"],
                               local_momenta[0][index]["momentum_buffer"])


@pytest.mark.parametrize("head", list(HEADS))
def test_full_state_moves_between_two_processes_and_one(two_processes, head):
    ranks, singles, _ = two_processes
    # 2 → 1: gathered on rank 0 only; one process loads it and gives back identical tensors
    full = ranks[0]["round_trip"][f"full_{head}"]
    assert ranks[1]["round_trip"][f"full_{head}"] == {}
    locals_ = [r["round_trip"][f"local_{head}"] for r in ranks]
    assert not torch.equal(locals_[0][next(iter(full))][:3], locals_[1][next(iter(full))][:3])
    one = PartialFC(C, D, head)
    one.load_full_state_dict(full)
    regathered = one.full_state_dict()
    assert regathered.keys() == full.keys()
    for key in full:
        assert torch.equal(regathered[key], full[key])
        assert torch.equal(full[key], torch.cat([loc[key] for loc in locals_]))
    (SoftmaxCenterLoss(C, D) if head == "softmax" else ArcFace(C, D)).load_state_dict(full)
    # 1 → 2: each process loaded its rows, and gathering them gives the saved state back
    for key, value in singles[head].items():
        assert torch.equal(ranks[0]["round_trip"][f"regathered_{head}"][key], value)
        for rank, result in enumerate(ranks):
            start, stop = shard_range(C, 2, rank)
            assert torch.equal(result["round_trip"][f"loaded_local_{head}"][key],
                               value[start:stop])


def test_mismatched_states_are_one_line_errors():
    crit = PartialFC(C, D, "arcface")
    with pytest.raises(FaceIgniteError, match="keys"):
        crit.load_full_state_dict(SoftmaxCenterLoss(C, D).state_dict())
    with pytest.raises(FaceIgniteError, match="shape"):
        crit.load_full_state_dict(ArcFace(C + 1, D).state_dict())
    with pytest.raises(FaceIgniteError, match="label 7 in the batch"):
        crit(torch.randn(2, D), torch.tensor([0, C]))
    with pytest.raises(FaceIgniteError, match="sample_rate"):
        PartialFC(C, D, sample_rate=0.0)


@pytest.mark.parametrize("head", list(HEADS))
def test_under_autocast_the_loss_is_computed_in_float32(head):
    """bf16 embeddings from an autocast model: the same loss and gradients as float32
    embeddings of the same (bf16) values; gradients reach the bf16 embeddings."""
    crit = PartialFC(C, D, head, **HEADS[head])
    crit.load_full_state_dict(reference(head).state_dict())
    embeddings, labels = global_batch()
    low = embeddings.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit(low, labels)
    out["loss"].backward()
    high = low.detach().float().requires_grad_()
    expected = crit(high, labels)
    assert out["loss"].dtype == torch.float32
    close(out["loss"], expected["loss"])
    crit.zero_grad()
    expected["loss"].backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), high.grad, rtol=1e-2, atol=1e-3)
