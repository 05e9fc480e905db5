"""Five-point alignment to the ArcFace 112×112 template (insightface's ``norm_crop``).

A face's five landmarks (left eye, right eye, nose tip, left and right mouth corners, in source
pixels) are mapped onto :data:`ARCFACE_TEMPLATE` by the similarity transform (rotation, uniform
scale, translation) that minimises the squared error (Umeyama, 1991), and the image is warped with
it by OpenCV (bilinear, black border), as insightface does with scikit-image's
``SimilarityTransform`` and ``cv2.warpAffine``.
"""
from __future__ import annotations

import cv2
import numpy as np

from faceignite.errors import FaceIgniteError

# (x, y) in pixels of a 112×112 crop: left eye, right eye, nose, left and right mouth corner.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
TEMPLATE_SIZE = 112


def template_points(image_size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The template for an ``image_size`` square crop (the 112-px points scaled by size / 112)."""
    if image_size <= 0:
        raise FaceIgniteError(f"five-point alignment needs a positive image size, got {image_size}")
    return ARCFACE_TEMPLATE * (image_size / TEMPLATE_SIZE)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of the least-squares similarity transform taking ``src`` points to ``dst``.

    Umeyama's closed form: centre both point sets, SVD of their covariance, reflection removed.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise FaceIgniteError(f"similarity transform needs matching point sets of 2 or more points, "
                              f"got {src.shape} and {dst.shape}")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = (src_c ** 2).sum(axis=1).mean()
    if not np.isfinite(var_src) or var_src <= 1e-12:
        raise FaceIgniteError("five-point alignment: the landmarks coincide (or are not finite)")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_src)
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, image_size: int = TEMPLATE_SIZE
                     ) -> np.ndarray:
    """``image`` (H×W×C uint8, any channel order) warped so that its five ``landmarks`` (5×2,
    source pixels) land on the ArcFace template of an ``image_size`` square crop."""
    matrix = similarity_transform(landmarks, template_points(image_size))
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                          borderValue=0.0)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (N×2) mapped by a 2×3 affine ``matrix``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]
