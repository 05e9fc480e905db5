"""Face alignment: ``python -m faceignite.align SRC DST`` turns raw photos into aligned face crops.

The recipe is davidsandberg/facenet's ``align_dataset_mtcnn.py`` on facenet-pytorch's MTCNN, the
one that made ``lfw-mtcnn-160`` and the CelebA ``aligned-160`` sets, so training and test crops match:

* MTCNN (facenet-pytorch 2.5.3 weights), min face 20 px, thresholds 0.6/0.7/0.7, factor 0.709;
* several faces: the one maximising box area - 2 x squared offset of its centre from the image centre;
* box grown by ``margin / 2`` pixels each side, clipped to the image, int-truncated, not squared;
* resized to ``image_size`` with Pillow BILINEAR, JPEG quality 92.

``--template arcface`` instead warps each face by its five MTCNN landmarks onto the ArcFace
112×112 template (least-squares similarity transform, :mod:`faceignite.align.five_point`), the crop
that iResNet and MobileFaceNet are trained on; it works on raw photos and on face crops alike
(e.g. the 160 px ``lfw-mtcnn-160`` crops → 112 px five-point crops).

Equal-size images are detected in batches (on CUDA when available).  Outputs keep SRC's relative
paths; files already in DST are skipped, so an interrupted run resumes.  Images without a face are
listed in ``DST/no_face.txt`` (``--no_face skip``) or centre-cropped and listed (``--no_face center``);
files that do not decode are listed in ``DST/failed.txt``.  ``--landmarks FILE.csv`` writes the box,
probability and 5 landmarks of every aligned image, in source-image pixels.
"""
from faceignite.align.cli import get_args_parser, main
from faceignite.align.detect import (FACENET_PYTORCH, Face, center_box, choose_face,
                                     crop_and_resize, crop_box, detect_faces, load_detector)
from faceignite.align.files import (FAILED_FILE, LANDMARK_COLUMNS, NO_FACE_FILE, LandmarkWriter,
                                    read_list)
from faceignite.align.folder import TEMPLATES, Summary, align_folder, five_point_crop
from faceignite.data.index import list_images

__all__ = [
    "FACENET_PYTORCH", "FAILED_FILE", "Face", "LANDMARK_COLUMNS", "LandmarkWriter", "NO_FACE_FILE",
    "Summary", "TEMPLATES", "align_folder", "five_point_crop", "center_box", "choose_face", "crop_and_resize", "crop_box",
    "detect_faces", "get_args_parser", "list_images", "load_detector", "main", "read_list",
]
