"""ResNet-34 + triplet loss, mined online (batch-hard or semi-hard) in P x K identity batches.

    python experiments/resnet34_triplet.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160 \
        --triplet_mining semi_hard --margin 0.2 --identities_per_batch 32 --images_per_identity 4

The loss's defaults (K = 4 images per identity, no held-out split, margin 0.2) are in
``faceignite.losses.factory.LOSS_DEFAULTS`` and ``TripletLoss.default_margin``.
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet34_triplet", model="resnet34", loss="triplet")
