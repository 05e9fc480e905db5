"""The five-point similarity transform (ArcFace template) recovers known transforms exactly."""
import numpy as np
import pytest

from faceignite.align.five_point import (ARCFACE_TEMPLATE, similarity_transform, template_points,
                                         transform_points, warp_to_template)
from faceignite.errors import FaceIgniteError


def test_recovers_a_known_similarity_transform():
    angle, scale, shift = np.deg2rad(17.0), 2.3, np.array([31.0, -12.5])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = (ARCFACE_TEMPLATE - shift) @ np.linalg.inv(scale * rot).T  # template = s R x + t
    matrix = similarity_transform(source, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(transform_points(matrix, source), ARCFACE_TEMPLATE, atol=1e-9)


def test_mirrored_landmarks_are_not_reflected():
    mirrored = ARCFACE_TEMPLATE.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0  # a similarity transform, never a mirror image


def test_warp_puts_a_marked_landmark_on_the_template():
    image = np.zeros((250, 250, 3), np.uint8)
    landmarks = template_points(112) * 1.5 + np.array([20.0, 30.0])
    x, y = np.round(landmarks[2]).astype(int)
    image[y - 1:y + 2, x - 1:x + 2] = 255  # the nose, a white dot
    crop = warp_to_template(image, landmarks, 112)
    assert crop.shape == (112, 112, 3)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.mean() - ARCFACE_TEMPLATE[2, 0]) < 1.0 and abs(ys.mean() - ARCFACE_TEMPLATE[2, 1]) < 1.0


def test_coincident_landmarks_are_one_line_error():
    with pytest.raises(FaceIgniteError, match="coincide"):
        similarity_transform(np.zeros((5, 2)), ARCFACE_TEMPLATE)
