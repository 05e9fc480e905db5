"""MobileFaceNet (~1 M parameters) + softmax cross-entropy + center loss on 112×112 five-point crops.

    python -m faceignite.align VGGFace2/raw VGGFace2/fp112 --template arcface      # 112 px crops
    python experiments/mobilefacenet_center.py --dataroot VGGFace2/fp112 --lfw lfw-fp112

128-d embedding (the paper's); weight decay 2e-4 (arcface_torch's mbf: a small network needs less);
the rest is the ResNet recipe.
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="mobilefacenet_center", model="mobilefacenet", loss="center", image_size=112,
         weight_decay=2e-4)  # embedding_dim: the registry's 128 (the paper's)
