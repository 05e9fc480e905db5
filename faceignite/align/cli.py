"""The command line: ``python -m faceignite.align SRC DST [options]``."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence


from faceignite.align.files import FAILED_FILE, NO_FACE_FILE
from faceignite.align.folder import TEMPLATES, align_folder
from faceignite.cli import exits_on_error
from faceignite.config import add_runtime_args

logger = logging.getLogger("faceignite.align")

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m faceignite.align",
        description="Align faces with MTCNN (davidsandberg/facenet recipe, or --template "
                    "arcface: five-point 112x112 crops): SRC holds raw photos or face crops "
                    "(identity sub-folders, JPEG/PNG at any depth); DST gets one crop per photo at "
                    "the same relative path. Re-running skips crops already in DST.")
    p.add_argument("src", metavar="SRC", help="Folder of raw photos")
    p.add_argument("dst", metavar="DST", help="Output folder for the aligned crops")
    p.add_argument("--template", choices=TEMPLATES, default="box",
                   help="box: the MTCNN box grown by --margin, resized (davidsandberg/facenet, "
                        "VGGFace2 recipe); arcface: warp the five landmarks onto the ArcFace "
                        "112x112 template by a least-squares similarity transform (iResNet, "
                        "MobileFaceNet) (default: box)")
    p.add_argument("--image_size", type=int, default=None,
                   help="Crop size in pixels (default: 160 with --template box, 112 with arcface; "
                        "arcface scales the template by size / 112)")
    p.add_argument("--margin", type=int, default=32,
                   help="--template box: pixels added around the MTCNN box, half on each side, in "
                        "source pixels (default: 32)")
    p.add_argument("--batch_size", type=int, default=32,
                   help="Equal-size images detected together (default: 32)")
    add_runtime_args(p)  # --device
    p.add_argument("--no_face", choices=("skip", "center"), default="skip",
                   help="Photos with no face: 'skip' lists them in DST/no_face.txt and writes no "
                        "crop; 'center' writes a centre crop (see --center_fraction) and lists them "
                        "(default: skip)")
    p.add_argument("--center_fraction", type=float, default=0.48,
                   help="--no_face center: side of the centred square as a fraction of the short "
                        "side (default: 0.48, LFW's 120 of 250 px)")
    p.add_argument("--ext", choices=("jpg", "png", "keep"), default="jpg",
                   help="Output format: jpg (quality 92), png, or keep the source's extension "
                        "(default: jpg)")
    p.add_argument("--landmarks", type=str, default=None, metavar="FILE.csv",
                   help="Write box, probability, 5 landmarks and crop region of each crop "
                        "(source pixels) to this CSV")
    p.add_argument("--min_face_size", type=int, default=20, help="MTCNN min face size (default: 20)")
    p.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.7],
                   help="MTCNN P/R/O-net thresholds (default: 0.6 0.7 0.7)")
    p.add_argument("--factor", type=float, default=0.709, help="MTCNN pyramid factor (default: 0.709)")
    p.add_argument("--num_workers", type=int, default=2,
                   help="Threads decoding the next images during detection (default: 2)")
    p.add_argument("--no_progress", action="store_true", help="No progress bar")
    return p


@exits_on_error
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 when done (even with no-face or failed files); bad input: one
    line and exit code 2."""
    from faceignite.run import setup_logging

    args = get_args_parser().parse_args(argv)
    setup_logging()
    if args.image_size is None:
        args.image_size = 112 if args.template == "arcface" else 160
    summary = align_folder(
        args.src, args.dst, image_size=args.image_size, margin=args.margin,
        batch_size=args.batch_size, device=args.device, no_face=args.no_face,
        center_fraction=args.center_fraction, ext=args.ext, landmarks=args.landmarks,
        min_face_size=args.min_face_size, thresholds=args.thresholds, factor=args.factor,
        num_workers=args.num_workers, progress=not args.no_progress, template=args.template)
    dst = os.path.abspath(args.dst)
    if summary.no_face:
        logger.info("no face (%s): listed in %s", "centre crop written" if args.no_face == "center"
                    else "no crop", os.path.join(dst, NO_FACE_FILE))
    if summary.failed:
        logger.info("failed: listed in %s", os.path.join(dst, FAILED_FILE))
    logger.info(summary.line())
    return 0
