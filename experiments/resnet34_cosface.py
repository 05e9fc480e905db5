"""ResNet-34 + CosFace (additive cosine margin, s = 64, m = 0.35): the standard run, another head.

    python experiments/resnet34_cosface.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160

Its lr 0.003 default is in ``faceignite.losses.factory.LOSS_DEFAULTS`` (why: there).
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet34_cosface", model="resnet34", loss="cosface")
