"""ResNet-34 + triplet loss, mined online (batch-hard or semi-hard) in P x K identity batches.

    python experiments/resnet34_triplet.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160 \
        --triplet_mining semi_hard --margin 0.2 --identities_per_batch 32 --images_per_identity 4
"""
import sys

from faceignite.losses import TripletLoss
from resnet34_center import main as recipe  # the recipe, beside this file

DEFAULTS = dict(margin=0.2, images_per_identity=4, valid_split=0.0,
                description="Training a face embedding with triplet loss (online mining)")


def triplet_loss(cfg, num_classes: int) -> TripletLoss:
    return TripletLoss(cfg.margin, cfg.triplet_mining)


def main(argv=None, **defaults) -> dict:
    return recipe(argv, "resnet34_triplet", triplet_loss, **{**DEFAULTS, **defaults})


if __name__ == "__main__":
    main(sys.argv[1:])
