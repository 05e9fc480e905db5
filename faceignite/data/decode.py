"""Decode encoded image bytes (JPEG/PNG from a .rec record or a .bin set) with OpenCV, to RGB."""
from __future__ import annotations

import cv2
import numpy as np


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Decode ``data`` into an RGB uint8 array (OpenCV decodes to BGR: converted here);
    ``None`` when the bytes are empty or do not decode."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
