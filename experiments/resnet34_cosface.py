"""ResNet-34 + CosFace (additive cosine margin, s = 64, m = 0.35): the center-loss recipe, another head.

    python experiments/resnet34_cosface.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160
"""
import sys

from faceignite.losses import CosFace
from resnet34_center import main as recipe  # the recipe, beside this file

# s = 64 multiplies the gradients: at the recipe's lr 0.1 training stalls where every embedding is
# orthogonal to every class (insightface's 0.1 is for batches of 1024); 0.003 learns.
DEFAULTS = dict(lr=0.003, description="Training a face embedding with a CosFace head")


def cosface(cfg, num_classes: int) -> CosFace:
    return CosFace(num_classes, cfg.embedding_dim, cfg.scale, cfg.margin)


def main(argv=None, **defaults) -> dict:
    return recipe(argv, "resnet34_cosface", cosface, **{**DEFAULTS, **defaults})


if __name__ == "__main__":
    main(sys.argv[1:])
