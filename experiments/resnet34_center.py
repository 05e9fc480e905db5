"""ResNet-34 + softmax cross-entropy + center loss: the standard run with its own defaults.

    python experiments/resnet34_center.py                       # built-in data, a few minutes on CPU
    python experiments/resnet34_center.py --dataroot VGGFace2/train --lfw lfw-mtcnn-160
    torchrun --nproc_per_node 4 experiments/resnet34_center.py --dataroot ...   # 4 GPUs
    python experiments/resnet34_center.py --nproc_per_node 4 --dataroot ...     # the same
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet34_center", model="resnet34", loss="center")
