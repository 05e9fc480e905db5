"""ResNet-50 + softmax cross-entropy + center loss: the standard run with another backbone."""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet50_center", model="resnet50", loss="center")
