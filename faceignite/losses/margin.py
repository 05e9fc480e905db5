"""Additive margin softmax heads: ArcFace (Deng et al. 2019) and CosFace (Wang et al. 2018).

Both classify by the cosine between the L2-normalised embedding and L2-normalised class
weights, scaled by ``s``; during training the target class gets a margin ``m``:
ArcFace ``s·cos(θ + m)``, CosFace ``s·(cos θ − m)``.  Computed in float32 even under autocast
(fp16 logits of scale 64 overflow the softmax's exponent).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """A cosine classifier trained with a margin on the target logit; subclasses set the margin.

    ``forward`` returns ``loss`` (cross-entropy of the margin logits), ``target_cos`` (mean cosine
    to the own class) and ``logits`` (``s·cos θ`` without margin: batch accuracy, held-out
    evaluation).  The class weights are trained with the model's optimizer
    (:meth:`model_parameters`).
    """

    default_margin = 0.0

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 64.0,
                 margin: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = scale
        self.margin = self.default_margin if margin is None else margin

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float(), dim=1),
                        F.normalize(self.weight.float(), dim=1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embeddings)

    def target_margin(self, cos: torch.Tensor) -> torch.Tensor:
        """The target class's cosine with the margin applied."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels[:, None])
        margin_logits = self.scale * cos.scatter(1, labels[:, None], self.target_margin(target))
        loss = F.cross_entropy(margin_logits, labels)
        return {"loss": loss, "target_cos": target.detach().mean(), "logits": self.scale * cos}

    def model_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, scale={self.scale}, margin={self.margin}"


class ArcFace(MarginHead):
    """Additive angular margin: ``cos(θ + m)`` on the target (default s = 64, m = 0.5 rad).

    Where ``θ + m`` would pass π (the cosine would rise again) the logit continues linearly,
    ``cos θ − m·sin m``, as insightface does.
    """

    default_margin = 0.5

    def target_margin(self, cos: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sin = (1.0 - cos.pow(2)).clamp_min(1e-9).sqrt()
        shifted = cos * math.cos(m) - sin * math.sin(m)
        return torch.where(cos > math.cos(math.pi - m), shifted, cos - m * math.sin(m))


class CosFace(MarginHead):
    """Additive cosine margin: ``cos θ − m`` on the target (default s = 64, m = 0.35)."""

    default_margin = 0.35

    def target_margin(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin
