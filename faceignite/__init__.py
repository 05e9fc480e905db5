"""faceignite: face-recognition embedding training on PyTorch and pytorch-ignite."""
import os

# albumentations checks online for updates at import time; we never have (or want) a network here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from faceignite.errors import FaceIgniteError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["FaceIgniteError", "__version__"]
