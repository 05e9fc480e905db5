"""iResNet-50 + softmax cross-entropy + center loss on 112×112 five-point crops.

    python -m faceignite.align VGGFace2/raw VGGFace2/fp112 --template arcface      # 112 px crops
    python experiments/iresnet50_center.py --dataroot VGGFace2/fp112 --lfw lfw-fp112

512-d embedding, weight decay 5e-4 (insightface arcface_torch's r50); the rest is the ResNet recipe.
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="iresnet50_center", model="iresnet50", loss="center", image_size=112,
         weight_decay=5e-4)  # embedding_dim: the registry's 512 for iresnet50
