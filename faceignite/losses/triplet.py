"""Triplet loss (Schroff et al., FaceNet 2015) with online mining inside P×K batches.

Distances are L2 (not squared) between L2-normalised embeddings, the distance LFW validation
uses, so ``margin`` is on the same scale as the verification threshold (0 … 2).  Mining picks
indices without gradient; the loss then flows through the chosen distances only.

* batch-hard (Hermans et al. 2017): for every anchor, its farthest positive and nearest negative;
* semi-hard (FaceNet; as TensorFlow's ``triplet_semihard_loss``): for every anchor-positive pair,
  the nearest negative that is still farther than the positive; when there is none, the farthest
  negative;
* random (the second original system's): the batch holds random triplets, in order (``--n_triplets``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pairwise_distances(embeddings: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """B x B L2 distances (float32); the gradient stays finite where a distance is 0."""
    x = embeddings.float()
    if normalize:
        x = F.normalize(x, dim=1)
    sq = x.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


@torch.no_grad()
def batch_hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """``(anchors, positives, negatives)``: per anchor the farthest positive and nearest negative.

    Anchors with no positive or no negative in the batch are left out.
    """
    positive, negative = _masks(labels)
    hardest_pos = dist.masked_fill(~positive, float("-inf")).argmax(1)
    hardest_neg = dist.masked_fill(~negative, float("inf")).argmin(1)
    valid = positive.any(1) & negative.any(1)
    anchors = torch.arange(len(labels), device=dist.device)[valid]
    return anchors, hardest_pos[valid], hardest_neg[valid]


@torch.no_grad()
def semi_hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """``(anchors, positives, negatives)``: one triplet per anchor-positive pair.

    The negative is the nearest one with ``d(a, n) > d(a, p)``; if none is farther than the
    positive, the farthest negative.  Pairs whose anchor has no negative are left out.
    """
    positive, negative = _masks(labels)
    anchors, positives = positive.nonzero(as_tuple=True)
    rows = dist[anchors]                                   # (pairs, B)
    neg = negative[anchors]
    outside = neg & (rows > dist[anchors, positives][:, None])
    semi = rows.masked_fill(~outside, float("inf")).argmin(1)
    easiest = rows.masked_fill(~neg, float("-inf")).argmax(1)
    negatives = torch.where(outside.any(1), semi, easiest)
    valid = neg.any(1)
    return anchors[valid], positives[valid], negatives[valid]


@torch.no_grad()
def given_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """``(anchors, positives, negatives)`` as the batch holds them: images ``3i, 3i+1, 3i+2``
    (``--triplet_mining random``, :class:`~faceignite.data.triplet_sampler.RandomTripletSampler`).

    Triplets whose labels do not fit (an unreadable image left out of the batch shifted them) are
    left out."""
    anchors = torch.arange(0, len(labels) - len(labels) % 3, 3, device=dist.device)
    positives, negatives = anchors + 1, anchors + 2
    valid = (labels[anchors] == labels[positives]) & (labels[anchors] != labels[negatives])
    return anchors[valid], positives[valid], negatives[valid]


MINERS = {"batch_hard": batch_hard_triplets, "semi_hard": semi_hard_triplets,
          "random": given_triplets}
MINING = tuple(MINERS)


class TripletLoss(nn.Module):
    """``mean(relu(d(a, p) - d(a, n) + margin))`` over the triplets mined in the batch.

    Returns ``loss``, ``active`` (fraction of triplets violating the margin), ``pos_dist`` and
    ``neg_dist`` (mean distances of the mined pairs).  It has no classifier (no ``logits``) and
    no parameters of its own.
    """

    default_margin = 0.2  # on the L2 distance of normalised embeddings (0 … 2)

    def __init__(self, margin: float | None = None, mining: str = "semi_hard",
                 normalize: bool = True):
        super().__init__()
        if mining not in MINERS:
            raise ValueError(f"unknown triplet mining {mining!r}: choose from {MINING}")
        self.margin = self.default_margin if margin is None else margin
        self.mining = mining
        self.normalize = normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        dist = pairwise_distances(embeddings, self.normalize)
        a, p, n = MINERS[self.mining](dist, labels)
        if len(a) == 0:  # no identity with two images in the batch: nothing to learn from
            zero = embeddings.float().sum() * 0.0
            return {"loss": zero, "active": zero.detach(), "pos_dist": zero.detach(),
                    "neg_dist": zero.detach()}
        d_ap, d_an = dist[a, p], dist[a, n]
        losses = F.relu(d_ap - d_an + self.margin)
        return {"loss": losses.mean(), "active": (losses > 0).float().mean(),
                "pos_dist": d_ap.detach().mean(), "neg_dist": d_an.detach().mean()}

    def model_parameters(self) -> list[nn.Parameter]:
        return []

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining}, normalize={self.normalize}"
