"""Training criteria: each maps ``(embeddings, labels)`` to a dict holding at least ``loss``."""
from faceignite.losses.center import CenterLoss, SoftmaxCenterLoss

__all__ = ["CenterLoss", "SoftmaxCenterLoss"]
