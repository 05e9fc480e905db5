"""Are two face images the same person?  Distance, and the decision at the trained threshold.

    python -m faceignite.verify --checkpoint runs/x/best_checkpoint_....pt a.jpg b.jpg

The threshold is the one LFW validation chose during training (``lfw_threshold`` in the
checkpoint), with that validation's distance and flip setting; ``--threshold`` overrides it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from faceignite.data.dataset import PROBLEMS, UNDECODABLE, read_rgb_checked
from faceignite.embed import embed_images, load_inference_model
from faceignite.config import add_options, add_runtime_args
from faceignite.runtime import resolve_device
from faceignite.cli import exits_on_error
from faceignite.errors import FaceIgniteError
from faceignite.verification.metrics import DISTANCES, pair_distances

logger = logging.getLogger("faceignite")


@dataclass
class Verification:
    distance: float
    threshold: float | None
    metric: str

    @property
    def same(self) -> bool | None:
        """``distance <= threshold`` (the LFW protocol's rule); None without a threshold."""
        return None if self.threshold is None else self.distance <= self.threshold

    def line(self) -> str:
        text = f"distance {self.distance:.4f} ({self.metric})"
        if self.threshold is None:
            return text + ", no threshold"
        verdict = "SAME person" if self.same else "DIFFERENT people"
        return f"{text}, threshold {self.threshold:.4f}: {verdict}"


def verify_images(model: torch.nn.Module, image1: str, image2: str, image_size: int,
                  threshold: float | None, distance: str = "l2", flip: bool = False,
                  device: str | torch.device = "cpu") -> Verification:
    """Embed both images as LFW validation does and compare them."""
    for path in (image1, image2):
        if not os.path.isfile(path):
            raise FaceIgniteError(f"image not found: {path}")
    embeddings, rows = embed_images(model, [image1, image2], image_size, device, flip=flip)
    if len(rows) < 2:
        bad = image2 if rows == [0] else image1
        problem = read_rgb_checked(bad)[1] or UNDECODABLE
        raise FaceIgniteError(f"cannot decode image {bad}: {PROBLEMS[problem]}")
    d = pair_distances(embeddings, np.array([0]), np.array([1]), distance)[0]
    return Verification(float(d), threshold, distance)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m faceignite.verify",
                                description="Compare two face images with a trained model")
    p.add_argument("image1")
    p.add_argument("image2")
    p.add_argument("--checkpoint", required=True,
                   help="Training checkpoint (.pt), run folder (its best: --which), or exported "
                        "model folder")
    add_options(p, ("which",))
    p.add_argument("--threshold", type=float, default=None,
                   help="Decision threshold (default: the checkpoint's lfw_threshold)")
    p.add_argument("--distance", choices=tuple(DISTANCES), default=None,
                   help="Distance (default: the one the run validated with)")
    p.add_argument("--normalize", type=str, default=None,
                   help="Input normalisation: insightface, facenet, imagenet or MEAN,STD in pixel "
                        "units (default: the one the model was trained with)")
    p.add_argument("--image_size", type=int, default=None,
                   help="Input size (default: the checkpoint's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="Flip TTA (default: as the run's LFW validation, --lfw_flip)")
    add_runtime_args(p)
    return p


@exits_on_error
def main(argv: Sequence[str] | None = None) -> Verification:
    """Print one line: distance, threshold and SAME/DIFFERENT; exit code 2 on bad input."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    device = resolve_device(args.device)
    model, info = load_inference_model(args.checkpoint, device, which=args.which,
                                       normalize=args.normalize)
    distance = args.distance or info["distance"]
    if args.distance and args.distance != info["distance"] and args.threshold is None:
        raise FaceIgniteError(f"the threshold of {info['source']} is for the "
                              f"{info['distance']} distance: drop --distance or pass --threshold")
    threshold = args.threshold if args.threshold is not None else info["lfw_threshold"]
    result = verify_images(model, args.image1, args.image2,
                           args.image_size or info["image_size"], threshold, distance,
                           info["flip"] if args.flip is None else args.flip, device)
    print(result.line())
    if threshold is None:
        raise FaceIgniteError(f"{info['source']} holds no lfw_threshold (no LFW validation "
                              f"ran in training): pass --threshold")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
