"""Training criteria: each maps ``(embeddings, labels)`` to a dict holding at least ``loss``.

The interface is written in :mod:`faceignite.losses.protocol`; :mod:`faceignite.losses.factory`
builds each criterion from the options (``LOSSES``) with its own defaults (``LOSS_DEFAULTS``).
"""
from faceignite.losses.center import CenterLoss, SoftmaxCenterLoss
from faceignite.losses.margin import ArcFace, CosFace, MarginHead
from faceignite.losses.partial_fc import PartialFC
from faceignite.losses.protocol import (AdjustsGradients, Classifying, Criterion,
                                        HasCenterParameters, HasModelParameters, center_parameters,
                                        is_classifying, model_parameters)
from faceignite.losses.triplet import (MINING, TripletLoss, batch_hard_triplets,
                                       pairwise_distances, semi_hard_triplets)

__all__ = ["AdjustsGradients", "ArcFace", "CenterLoss", "Classifying", "CosFace", "Criterion",
           "HasCenterParameters", "HasModelParameters", "MINING", "MarginHead", "PartialFC",
           "SoftmaxCenterLoss", "TripletLoss", "batch_hard_triplets", "center_parameters",
           "is_classifying", "model_parameters", "pairwise_distances", "semi_hard_triplets"]
