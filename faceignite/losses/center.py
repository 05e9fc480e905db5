"""Center loss (Wen et al., ECCV 2016), written here, and the softmax + center-loss criterion."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CenterLoss(nn.Module):
    """One learnable centre per class; loss = mean over the batch of ||f_i - c_{y_i}||².

    Convention: squared L2 distance, averaged over the batch, no factor ½ (as in KaiyangZhou's
    implementation).  Only the centres of the batch's classes are gathered (O(B·D)), never a full
    B x C distance matrix.  Computed in float32 even under autocast.
    """

    def __init__(self, num_classes: int, embedding_dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = features.float() - self.centers[labels]
        return diff.pow(2).sum(dim=1).mean()


class SoftmaxCenterLoss(nn.Module):
    """Cross-entropy over a linear classifier + ``center_loss_weight`` x center loss.

    Its classifier is trained with the model's optimizer; the centres (:meth:`center_parameters`)
    with their own.  :meth:`before_optimizer_step` divides the centres' gradient by the weight λ,
    so that λ scales the pull on the features but not the centres' own learning rate (Wen et al.).
    """

    def __init__(self, num_classes: int, embedding_dim: int, center_loss_weight: float = 0.01,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.classifier = nn.Linear(embedding_dim, num_classes)
        self.center_loss = CenterLoss(num_classes, embedding_dim)
        self.center_loss_weight = center_loss_weight
        self.label_smoothing = label_smoothing

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(embeddings)
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        center = self.center_loss(embeddings, labels)
        return {"loss": ce + self.center_loss_weight * center, "ce": ce, "center": center,
                "logits": logits}

    def model_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with the model's optimizer (the classifier)."""
        return list(self.classifier.parameters())

    def center_parameters(self) -> list[nn.Parameter]:
        return [self.center_loss.centers]

    def before_optimizer_step(self) -> None:
        grad = self.center_loss.centers.grad
        if grad is not None and self.center_loss_weight > 0:
            grad.mul_(1.0 / self.center_loss_weight)
