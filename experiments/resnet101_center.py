"""ResNet-101 + softmax cross-entropy + center loss: the standard run with another backbone."""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet101_center", model="resnet101", loss="center")
