"""ResNet-50 + softmax cross-entropy + center loss: the ResNet-34 recipe with another backbone."""
import sys

from resnet34_center import main  # the recipe, beside this file

if __name__ == "__main__":
    main(sys.argv[1:], name="resnet50_center", model="resnet50")
