"""VGG16 + softmax cross-entropy + center loss: the second original system's
``train_center.py`` (112×112 MTCNN crops, SGD, batch 256), with its JSON file as it was.

    python experiments/vgg16_center.py --config training_certer.json     # its keys, as they were
    python experiments/vgg16_center.py --dataroot VGGFace2/train-112 --lfw lfw-112 --pretrained download

Where its defaults were unsound this recipe differs (README, "Coming from the second system"):
lr 0.01 (VGG16 has no BatchNorm; VGG's own ImageNet rate at batch 256), weight decay 5e-4,
λ 0.003.
"""
import sys

from handlers.training import main

# the second system's setting; lr and weight decay: see the README
VGG16_DEFAULTS = dict(model="vgg16", image_size=112, batch_size=256, optimizer="sgd", lr=0.01,
                      epochs=50)

if __name__ == "__main__":
    main(sys.argv[1:], name="vgg16_center", loss="center", **VGG16_DEFAULTS,
         description="Training VGG16 with softmax + center loss (the second original system)")
