"""Training criteria: each maps ``(embeddings, labels)`` to a dict holding at least ``loss``."""
from faceignite.losses.center import CenterLoss, SoftmaxCenterLoss
from faceignite.losses.margin import ArcFace, CosFace, MarginHead
from faceignite.losses.partial_fc import PartialFC
from faceignite.losses.triplet import (TripletLoss, batch_hard_triplets, pairwise_distances,
                                       semi_hard_triplets)

__all__ = ["ArcFace", "CenterLoss", "CosFace", "MarginHead", "PartialFC", "SoftmaxCenterLoss",
           "TripletLoss", "batch_hard_triplets", "pairwise_distances", "semi_hard_triplets"]
