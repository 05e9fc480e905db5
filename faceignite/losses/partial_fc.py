"""Partial FC: the classifier and the centres sharded by rows over the processes (written here).

After An et al., "Partial FC: Training 10 Million Identities on a Single Machine" (ICCVW 2021)
and insightface arcface_torch's ``partial_fc_v2.py``.  Each of the ``W`` processes of a
``torch.distributed`` run holds the rows ``[start, stop)`` of :func:`shard_range` (``C`` classes
need not divide by ``W``: the first ``C mod W`` processes hold one row more) of the classifier
and of the centres.  A step:

1. all-gathers the embeddings and the labels of every process (the global batch ``B``); the
   embeddings' gradient flows back to the process that made each one (:class:`_GatherRows`);
2. computes the logits of the global batch for the local classes only (``B x C/W``);
3. computes the softmax cross-entropy across the shards, with the row maxima and the sums of
   exponentials all-reduced (:class:`_ShardedCrossEntropy`, exact gradient);
4. adds the center loss of the rows whose class this process owns: each centre has its gradient
   (and its update) on the one process that holds it.

The loss is the mean over the global batch, the same value on every process, and with
``sample_rate=1`` the same loss and gradients as :class:`SoftmaxCenterLoss`, :class:`ArcFace` or
:class:`CosFace` on that global batch.  Everything is computed in float32, autocast or not.
"""
from __future__ import annotations

from typing import Mapping

import ignite.distributed as idist
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from faceignite.errors import FaceIgniteError
from faceignite.losses.center import CenterLoss
from faceignite.losses.margin import ArcFace, CosFace

HEADS = ("softmax", "arcface", "cosface")
# the margin conventions of margin.py, shared (they read only ``self.margin``)
_TARGET_MARGIN = {"arcface": ArcFace.target_margin, "cosface": CosFace.target_margin}
_DEFAULT_MARGIN = {"arcface": ArcFace.default_margin, "cosface": CosFace.default_margin}


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of ``num_classes`` that process ``rank`` of ``world_size`` holds:
    ``num_classes // world_size`` each, one more for the first ``num_classes % world_size``."""
    base, extra = divmod(num_classes, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + int(rank < extra)


def _world() -> tuple[int, int]:
    return idist.get_world_size(), idist.get_rank()


def _all_gather_rows(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The rows of every process, in rank order (``sizes[r]`` rows from rank ``r``): padded to
    the largest so that uneven batches gather too.  No gradient."""
    most = max(sizes)
    padded = local
    if local.shape[0] != most:
        padded = local.new_zeros((most,) + tuple(local.shape[1:]))
        padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """All-gather of the embeddings whose backward sums every process's gradient of the gathered
    rows and hands each process the rows it contributed, times ``grad_scale``."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], rank: int,
                grad_scale: float) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.grad_scale = sizes, rank, grad_scale
        return _all_gather_rows(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # all-reduce rather than reduce-scatter: gloo has no reduce_scatter; B x D is small
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        mine = grad[start:start + ctx.sizes[ctx.rank]]
        return mine * ctx.grad_scale if ctx.grad_scale != 1 else mine, None, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean over the rows of the softmax cross-entropy, the classes (columns) split over the
    processes.  ``logits``: ``B x K`` float32, this process's columns; ``target``: the column of
    each row's class when this process holds it, else −1.  Every process returns the same global
    value; the backward gives each its own columns' exact gradient
    ``(softmax − (1−ε)·onehot − ε/K_all) / B``.  ``smoothing`` ε over ``num_active`` classes as
    ``F.cross_entropy(label_smoothing=ε)``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float,
                num_active: int, distributed: bool) -> torch.Tensor:
        batch, width = logits.shape
        row_max = (logits.detach().max(dim=1).values if width
                   else logits.new_full((batch,), float("-inf")))
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = logits.detach() - row_max[:, None]
        exp.exp_()  # in place: one more B x K matrix, not two
        owned = (target >= 0).nonzero().squeeze(1)
        target_logit = logits.new_zeros(batch)
        target_logit[owned] = logits.detach()[owned, target[owned]]
        parts = [exp.sum(dim=1), target_logit]
        if smoothing:
            parts.append(logits.detach().sum(dim=1))
        sums = torch.stack(parts)
        if distributed:
            dist.all_reduce(sums)
        sum_exp, target_logit = sums[0], sums[1]
        log_norm = row_max + sum_exp.log()
        per_row = (1.0 - smoothing) * (log_norm - target_logit)
        if smoothing:
            per_row = per_row + smoothing * (log_norm - sums[2] / num_active)
        exp.div_(sum_exp[:, None])  # the softmax, kept for the backward
        ctx.save_for_backward(exp, target)
        ctx.smoothing, ctx.num_active = smoothing, num_active
        return per_row.mean() if batch else logits.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        prob, target = ctx.saved_tensors
        batch = prob.shape[0]
        if batch == 0:
            return prob, None, None, None, None
        # in place on the saved softmax (B x K): a second backward fails loudly (version check)
        grad_logits = prob
        if ctx.smoothing:
            grad_logits.sub_(ctx.smoothing / ctx.num_active)
        owned = (target >= 0).nonzero().squeeze(1)
        grad_logits[owned, target[owned]] -= 1.0 - ctx.smoothing
        return grad_logits.mul_(grad / batch), None, None, None, None


class PartialFC(nn.Module):
    """A sharded classifier (+ sharded centres) criterion: ``(embeddings, labels) -> dict``.

    ``head``: ``softmax`` (a linear classifier with bias, plus ``center_loss_weight`` λ x center
    loss: mean over the global batch of ||f − c_y||², no ½, as :class:`CenterLoss`), ``arcface``
    or ``cosface`` (cosine classifier, no bias, ``scale`` s and ``margin`` m as in margin.py).
    Parameter names and shapes (per shard) are those of :class:`SoftmaxCenterLoss`
    (``classifier.weight``, ``classifier.bias``, ``center_loss.centers``) or of
    :class:`MarginHead` (``weight``), so :meth:`full_state_dict` reads as theirs.

    ``sample_rate`` R < 1 (training mode only): each step uses, per shard, every class of the
    global batch plus random others, ``int(R x local classes)`` in all (all positives when they
    are more), as Partial FC does.  The sampled rows are taken from the full local parameters
    inside autograd, so the unsampled rows get a zero gradient; the optimizer state stays one
    per row, never reshuffled.  With SGD momentum an unsampled row still moves by its decaying
    momentum and, if its group has weight decay, shrinks — as in insightface's partial_fc_v2,
    whose weight is one parameter indexed the same way.  We keep weight decay (so R = 1 trains
    exactly as the unsharded classifier).  With Adam an unsampled row likewise keeps moving by
    its first moment: prefer SGD, as arcface_torch does.  The centres need no sampling (only the
    batch's classes' centres get a gradient).  The sample draws from torch's global generator.

    ``ddp_model``: the embedding model is wrapped in DDP, which *averages* its gradients over the
    processes; the embeddings' gradient is then multiplied by the world size, so that the average
    is the gradient of the global-batch loss (insightface does the same).  Never wrap this
    criterion in DDP: its shards differ per process and need no all-reduce.

    Returns ``loss``, ``ce``, ``center`` (softmax head) or ``target_cos`` (margin heads), and
    ``accuracy`` (0-dim: share of the global batch whose own class has the largest logit among
    the classes of this step), all equal on every process.  No ``logits``: nobody holds them all.
    Construct it after the process group is initialised (inside ``idist.Parallel``).

    ``collective`` (True): every process must call it (training step, :meth:`row_statistics`,
    :meth:`full_state_dict`) the same number of times, with zero rows when it has none.
    """

    collective = True

    def __init__(self, num_classes: int, embedding_dim: int, head: str = "softmax",
                 center_loss_weight: float = 0.01, label_smoothing: float = 0.0,
                 scale: float = 64.0, margin: float | None = None, sample_rate: float = 1.0,
                 ddp_model: bool = True):
        super().__init__()
        if head not in HEADS:
            raise FaceIgniteError(f"partial FC head {head!r}: choose one of {', '.join(HEADS)}")
        if not 0.0 < sample_rate <= 1.0:
            raise FaceIgniteError(f"--sample_rate {sample_rate}: must be in (0, 1]")
        self.world_size, self.rank = _world()
        if num_classes < self.world_size:
            raise FaceIgniteError(f"--partial_fc: {num_classes} classes for {self.world_size} "
                                  "processes; each process needs at least one class")
        self.num_classes, self.embedding_dim, self.head = num_classes, embedding_dim, head
        self.class_start, self.class_stop = shard_range(num_classes, self.world_size, self.rank)
        self.num_local = self.class_stop - self.class_start
        self.sample_rate, self.label_smoothing = sample_rate, label_smoothing
        self.grad_scale = float(self.world_size) if ddp_model else 1.0
        self.last_sample: torch.Tensor | None = None  # the local rows the last step used
        # one draw from the global generator (the same in every process), then a seed per rank:
        # equally seeded processes give distinct rows to distinct classes
        seed = int(torch.randint(0, 2**62, ())) + self.rank
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._make_parameters(head, embedding_dim, center_loss_weight, scale, margin)

    def _make_parameters(self, head: str, embedding_dim: int, center_loss_weight: float,
                         scale: float, margin: float | None) -> None:
        if head == "softmax":
            self.classifier = nn.Linear(embedding_dim, self.num_local)
            self.center_loss = CenterLoss(self.num_local, embedding_dim)
            self.center_loss_weight = center_loss_weight
        else:
            self.weight = nn.Parameter(torch.empty(self.num_local, embedding_dim))
            nn.init.normal_(self.weight, std=0.01)
            self.scale = scale
            self.margin = _DEFAULT_MARGIN[head] if margin is None else margin

    # ------------------------------------------------------------------ the step
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._forward(embeddings.float(), labels)

    def _forward(self, local: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        distributed = self.world_size > 1
        if distributed:
            sizes = idist.all_gather(torch.tensor([local.shape[0]], device=local.device)).tolist()
            features = _GatherRows.apply(local, sizes, self.rank, self.grad_scale)
            labels = _all_gather_rows(labels.to(local.device), sizes)
        else:
            features = local
        batch = features.shape[0]
        if batch == 0:
            return self._empty(local)
        low, high = torch.stack([labels.min(), labels.max()]).tolist()  # the same everywhere
        if low < 0 or high >= self.num_classes:
            raise FaceIgniteError(f"label {low if low < 0 else high} in the batch: the criterion "
                                  f"has {self.num_classes} classes (0..{self.num_classes - 1})")
        owned = (labels >= self.class_start) & (labels < self.class_stop)
        target = torch.where(owned, labels - self.class_start, torch.full_like(labels, -1))
        rows = self.sample(target) if self.training else None
        self.last_sample = rows
        column = target
        if rows is not None:
            column = torch.where(owned, torch.searchsorted(rows, target), target)
        num_active = self.num_classes
        if rows is not None and self.label_smoothing:
            num_active = int(idist.all_reduce(torch.tensor(rows.numel(), device=local.device)))

        out: dict[str, torch.Tensor] = {}
        mine = owned.nonzero().squeeze(1)
        if self.head == "softmax":
            weight = self.classifier.weight if rows is None else self.classifier.weight[rows]
            bias = self.classifier.bias if rows is None else self.classifier.bias[rows]
            logits = F.linear(features, weight, bias)
            plain_max, target_plain = self._plain_statistics(logits, mine, column[mine], 1.0)
        else:
            weight = self.weight if rows is None else self.weight[rows]
            logits = F.linear(F.normalize(features, dim=1), F.normalize(weight, dim=1))  # cos θ
            target_cos = logits[mine, column[mine]]
            plain_max, target_plain = self._plain_statistics(logits, mine, column[mine],
                                                             self.scale)
            # s·cos θ with the margin on the targets, in place: one B x K matrix (the matmul's
            # backward keeps its inputs, not the cosines)
            logits.mul_(self.scale).index_put_(
                (mine, column[mine]), self.scale * _TARGET_MARGIN[self.head](self, target_cos))
        out["ce"] = _ShardedCrossEntropy.apply(logits, column, self.label_smoothing, num_active,
                                               distributed)

        # one MAX and one SUM all-reduce for the accuracy and the centre/cosine statistics
        if self.head == "softmax":
            diff = features[mine] - self.center_loss.centers[labels[mine] - self.class_start]
            center_local = diff.pow(2).sum()
            extra = center_local.detach()
        else:
            extra = target_cos.detach().sum()
        sums = torch.cat([target_plain, extra.reshape(1)])
        if distributed:
            dist.all_reduce(plain_max, op=dist.ReduceOp.MAX)
            dist.all_reduce(sums)
        out["accuracy"] = (sums[:batch] >= plain_max).float().mean()
        if self.head == "softmax":
            # the global value; the gradient only through this process's own rows and centres
            center = (center_local - center_local.detach() + sums[batch]) / batch
            out["center"] = center
            out["loss"] = out["ce"] + self.center_loss_weight * center
        else:
            out["target_cos"] = sums[batch] / batch
            out["loss"] = out["ce"]
        return out

    @staticmethod
    @torch.no_grad()
    def _plain_statistics(values: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of the batch: the largest margin-free logit of this shard, and the target's
        (0 where another shard holds the class)."""
        batch = values.shape[0]
        row_max = (values.max(dim=1).values * scale if values.shape[1]
                   else values.new_full((batch,), float("-inf")))
        target = values.new_zeros(batch)
        target[rows] = values[rows, columns] * scale
        return row_max, target

    @torch.no_grad()
    def row_statistics(self, embeddings: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out evaluation, collective: for each of this process's rows (any number, zero
        too), the cross-entropy (nats) of the margin-free logits over every class, as
        ``nn.CrossEntropyLoss`` on the unsharded heads' ``logits()``, and 1.0 where the own class
        has the largest logit (else 0.0).  No sampling, no label smoothing; float32."""
        local = embeddings.detach().float()
        labels = labels.to(local.device, dtype=torch.long)
        sizes = [local.shape[0]]
        features = local
        if self.world_size > 1:
            sizes = idist.all_gather(torch.tensor([local.shape[0]], device=local.device)).tolist()
            features = _all_gather_rows(local, sizes)
            labels = _all_gather_rows(labels, sizes)
        if labels.numel():
            low, high = torch.stack([labels.min(), labels.max()]).tolist()
            if low < 0 or high >= self.num_classes:
                raise FaceIgniteError(f"label {low if low < 0 else high} in the batch: the "
                                      f"criterion has {self.num_classes} classes")
        owned = (labels >= self.class_start) & (labels < self.class_stop)
        mine = owned.nonzero().squeeze(1)
        if self.head == "softmax":
            logits = F.linear(features, self.classifier.weight.float(),
                              self.classifier.bias.float())
        else:
            logits = self.scale * F.linear(F.normalize(features, dim=1),
                                           F.normalize(self.weight.float(), dim=1))
        row_max, target = self._plain_statistics(logits, mine, labels[mine] - self.class_start,
                                                 1.0)
        if self.world_size > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        sums = torch.stack([(logits - row_max[:, None]).exp().sum(dim=1), target])
        if self.world_size > 1:
            dist.all_reduce(sums)
        loss = row_max + sums[0].log() - sums[1]
        correct = (sums[1] >= row_max).float()
        start = sum(sizes[:self.rank]) if self.world_size > 1 else 0
        rows = slice(start, start + local.shape[0])
        return loss[rows], correct[rows]

    def _empty(self, local: torch.Tensor) -> dict[str, torch.Tensor]:
        """No image in the whole global batch: zero losses that still reach every parameter."""
        zero = local.sum() * 0 + sum(p.sum() for p in self.parameters()) * 0
        out = {"loss": zero, "ce": zero.detach(), "accuracy": zero.detach()}
        out["center" if self.head == "softmax" else "target_cos"] = zero.detach()
        return out

    def sample(self, target: torch.Tensor) -> torch.Tensor | None:
        """The sorted local rows for this step: every local class in ``target`` (−1: another
        shard's) plus random others, ``int(sample_rate x num_local)`` rows in all (more if the
        positives are more); None when that is every row."""
        num_sample = int(self.sample_rate * self.num_local)
        if num_sample >= self.num_local:
            return None
        positive = torch.unique(target[target >= 0])
        if positive.numel() >= num_sample:
            return positive  # torch.unique sorts
        score = torch.rand(self.num_local, device=target.device)
        score[positive] = 2.0  # above any random score: always kept
        return torch.topk(score, num_sample).indices.sort().values

    # ------------------------------------------------------------------ optimizers
    def model_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the model's optimizer (this process's classifier rows)."""
        return list(self.classifier.parameters()) if self.head == "softmax" else [self.weight]

    def center_parameters(self) -> list[nn.Parameter]:
        return [self.center_loss.centers] if self.head == "softmax" else []

    def before_optimizer_step(self) -> None:
        """As :meth:`SoftmaxCenterLoss.before_optimizer_step`: the centres' gradient over λ."""
        if self.head == "softmax":
            grad = self.center_loss.centers.grad
            if grad is not None and self.center_loss_weight > 0:
                grad.mul_(1.0 / self.center_loss_weight)

    # ------------------------------------------------------------------ checkpoints
    def full_state_dict(self, dst: int = 0, chunk_rows: int = 65536) -> dict[str, torch.Tensor]:
        """Collective (every process calls it): on ``dst`` the full, unsharded tensors on the CPU
        under the keys of :class:`SoftmaxCenterLoss` / :class:`MarginHead`; ``{}`` elsewhere.
        Gathered ``chunk_rows`` rows per process at a time: only ``dst`` holds the full copy."""
        out = {}
        for key, tensor in self.state_dict().items():
            full = gather_rows(tensor.detach(), self.num_classes, dst, chunk_rows)
            if full is not None:
                out[key] = full
        return out

    def load_full_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load this process's rows of a full state (:meth:`full_state_dict`, or the
        ``state_dict`` of an unsharded :class:`SoftmaxCenterLoss` / :class:`MarginHead`)."""
        own = self.state_dict()
        if set(state) != set(own):
            raise FaceIgniteError(f"criterion state has keys {sorted(state)}, the --partial_fc "
                                  f"{self.head} head needs {sorted(own)}")
        shards = {}
        for key, tensor in state.items():
            if tensor.shape[0] != self.num_classes or tensor.shape[1:] != own[key].shape[1:]:
                raise FaceIgniteError(f"criterion state {key}: shape {tuple(tensor.shape)}, "
                                      f"expected ({self.num_classes}, ...) classes x "
                                      f"{tuple(own[key].shape[1:])}")
            shards[key] = tensor[self.class_start:self.class_stop]
        self.load_state_dict(shards)

    def full_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, dst: int = 0,
                                  chunk_rows: int = 65536) -> dict:
        """Collective: ``optimizer.state_dict()`` with the per-row state of this criterion's
        parameters (momentum, Adam moments) gathered to full size on ``dst`` (``{}``
        elsewhere); other parameters' state as it is (replicated by DDP)."""
        state = optimizer.state_dict()
        mine = self._own_indices(optimizer)
        for index in sorted(state["state"]):
            if index not in mine:
                continue
            entries = state["state"][index] = dict(state["state"][index])  # not the live one
            for name in sorted(entries):
                value = entries[name]
                if isinstance(value, torch.Tensor) and value.shape == mine[index].shape \
                        and value.ndim >= 1:
                    entries[name] = gather_rows(value, self.num_classes, dst, chunk_rows)
        return state if self.rank == dst or self.world_size == 1 else {}

    def load_full_optimizer_state_dict(self, optimizer: torch.optim.Optimizer,
                                       state: Mapping) -> None:
        """Load a full optimizer state (:meth:`full_optimizer_state_dict`, or an unsharded run's
        with the same parameter order) keeping this process's rows of its own parameters."""
        mine = self._own_indices(optimizer)
        sliced = {"param_groups": state["param_groups"], "state": {}}
        for index, entries in state["state"].items():
            entries = dict(entries)
            if int(index) in mine:
                for name, value in entries.items():
                    if isinstance(value, torch.Tensor) and value.ndim >= 1 \
                            and value.shape[0] == self.num_classes:
                        entries[name] = value[self.class_start:self.class_stop]
            sliced["state"][index] = entries
        optimizer.load_state_dict(sliced)

    def _own_indices(self, optimizer: torch.optim.Optimizer) -> dict[int, nn.Parameter]:
        """The optimizer's state-dict indices of this criterion's parameters."""
        own = {id(p) for p in self.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i: p for i, p in enumerate(params) if id(p) in own}

    def extra_repr(self) -> str:
        return (f"head={self.head}, classes={self.num_classes}, rows=[{self.class_start}, "
                f"{self.class_stop}) of rank {self.rank}/{self.world_size}, "
                f"sample_rate={self.sample_rate}")


def gather_rows(local: torch.Tensor, num_rows: int, dst: int = 0,
                chunk_rows: int = 65536) -> torch.Tensor | None:
    """Collective: the full ``num_rows`` x ... tensor whose rows :func:`shard_range` shares out,
    assembled on the CPU of process ``dst`` (None elsewhere).  ``chunk_rows`` rows per process
    per ``gather``, so ``dst`` holds at most ``W x chunk_rows`` rows on the device at once."""
    world_size, rank = _world()
    if world_size == 1:
        return local.detach().cpu().clone()
    ranges = [shard_range(num_rows, world_size, r) for r in range(world_size)]
    most = max(stop - start for start, stop in ranges)
    full = local.new_empty((num_rows,) + tuple(local.shape[1:]), device="cpu") \
        if rank == dst else None
    for offset in range(0, most, chunk_rows):
        rows = min(chunk_rows, most - offset)
        block = local.new_zeros((rows,) + tuple(local.shape[1:]))
        part = local.detach()[offset:offset + rows]
        block[:part.shape[0]] = part
        parts = [torch.empty_like(block) for _ in range(world_size)] if rank == dst else None
        dist.gather(block, parts, dst=dst)
        if full is not None:
            for (start, stop), got in zip(ranges, parts):
                count = max(0, min(rows, stop - start - offset))
                full[start + offset:start + offset + count] = got[:count].cpu()
    return full
