"""VGG16 + triplet loss (margin 0.5): the second original system's ``train_triplet.py``.

    python experiments/vgg16_triplet.py --config training_triplet.json   # n_triplets: random triplets
    python experiments/vgg16_triplet.py --dataroot VGGFace2/train-112 --n_triplets 1000000
    python experiments/vgg16_triplet.py --dataroot VGGFace2/train-112    # online semi-hard mining

Its ``n_triplets`` (a key of the file or ``--n_triplets``) selects ``--triplet_mining random``:
an epoch of N random triplets, ``--batch_size`` of them per batch (3 images each); without it
the online miners (P x K batches) stay the default.
"""
import sys

from handlers.training import main

VGG16_DEFAULTS = dict(model="vgg16", image_size=112, batch_size=256, optimizer="sgd", lr=0.01,
                      epochs=50, margin=0.5)

if __name__ == "__main__":
    main(sys.argv[1:], name="vgg16_triplet", loss="triplet", **VGG16_DEFAULTS,
         description="Training VGG16 with triplet loss (the second original system)")
