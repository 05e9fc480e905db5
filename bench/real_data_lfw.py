"""Real faces: train ResNet-34 on the CelebA subset for a fixed budget, validate on real LFW.

Runs the experiment twice with the same budget and options — center loss (the recipe) and plain
softmax (``--center_loss_weight 0``) — so the centre term's contribution is measured, and prints
the LFW table of both (6,000 pairs, 10 folds) with the ROC PNG paths.  The budget is a number of
epochs (the same work for both, fair on a shared machine), optionally capped by ``--budget``
seconds of wall time.

    python bench/real_data_lfw.py                                  # 2 x 6 epochs at 64 px
    python bench/real_data_lfw.py --image_size 112 --epochs 5 --budget 1500   # BENCHMARKS.md

Any backbone, either alignment: ``--model`` (any of ``faceignite.models.ARCHITECTURES``; its usual
embedding size unless ``--embedding_dim``), ``--train_dir`` / ``--lfw_dir`` (e.g. five-point 112 px
crops made by ``python -m faceignite.align ... --template arcface`` or ``five_point_crops.py``),
``--variants center`` to run one variant only.

    python bench/real_data_lfw.py --model mobilefacenet --image_size 112 --variants center \
        --train_dir /tmp/celeba-fp112 --lfw_dir /tmp/lfw-fp112 --epochs 2 --budget 600
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA as DATA

from faceignite.models import ARCHITECTURES, SPECS  # noqa: E402

sys.path.insert(0, str(REPO / "experiments"))
from resnet34_center import main as train  # noqa: E402

ROWS = [("LFW accuracy", "lfw_accuracy", 100), ("± std", "lfw_accuracy_std", 100),
        ("TAR @ FAR=1e-3", "lfw_val_far1e-3", 100), ("TAR @ FAR=1e-2", "lfw_val_far1e-2", 100),
        ("AUC", "lfw_auc", 1), ("EER", "lfw_eer", 100), ("threshold (L2)", "lfw_threshold", 1),
        ("held-out accuracy", "val_accuracy", 100), ("epochs done", "epochs", 1),
        ("iterations done", "iterations", 1),
        ("train images/s", "train_images_per_s", 1), ("LFW images/s", "lfw_images_per_s", 1),
        ("wall s", "wall_s", 1)]
VARIANTS = {"center": 0.01, "softmax": 0.0}


def run_variant(name: str, weight: float, args: argparse.Namespace, out: Path) -> dict:
    argv = ["--dataroot", str(args.train_dir), "--model", args.model,
            "--embedding_dim", str(args.embedding_dim),
            "--lfw", str(args.lfw_dir), "--lfw_pairs", str(args.lfw_pairs),
            "--image_size", str(args.image_size), "--epochs", str(args.epochs),
            *(["--max_time", str(args.budget)] if args.budget else []),
            "--batch_size", str(args.batch_size),
            "--lr_scheduler", "cosine", "--valid_split", str(args.valid_split),
            *([] if args.no_lfw_flip else ["--lfw_flip"]),
            *(["--warmup_epochs", str(args.warmup_epochs)] if args.warmup_epochs is not None else []),
            "--lfw_validation_epoch_interval", str(10 ** 6),  # once, at the end of the budget
            "--center_loss_weight", str(weight), "--clearml", "off", "--output_dir", str(out / name)]
    started = time.perf_counter()
    metrics = train(argv, name=f"celeba_{name}")
    metrics["wall_s"] = time.perf_counter() - started
    run_dir = next((out / name).glob(f"celeba_{name}-*"))
    log = (run_dir / "run.log").read_text()
    metrics["epochs"] = len(re.findall(r" epoch \d+/\d+ \| loss", log))
    rates = re.findall(r"([\d.]+) img/s", log)  # the last epoch or iteration line: training rate
    iterations = re.findall(r"iteration (\d+)", log)
    metrics["iterations"] = int(iterations[-1]) if iterations else 0
    if rates:
        metrics["train_images_per_s"] = float(rates[-1])
    elif args.budget and metrics["iterations"]:  # stopped by the budget before any log line
        metrics["train_images_per_s"] = metrics["iterations"] * args.batch_size / args.budget
    lfw_pass = re.findall(r"(\d+) pairs in ([\d.]+) s", log)
    if lfw_pass:  # unique images of the pairs, each embedded once (twice with flip TTA)
        metrics["lfw_images_per_s"] = lfw_images(args.lfw_pairs) / float(lfw_pass[-1][1])
    metrics["roc"] = str(next(iter(sorted(run_dir.glob("roc_lfw_*.png"))), ""))
    return metrics


def lfw_images(pairs_file: Path) -> int:
    """How many distinct images pairs.txt names (the images one LFW pass embeds)."""
    from faceignite.lfw import read_pairs

    return len(read_pairs(str(pairs_file)).keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=float, default=None,
                   help="cap on training seconds per variant (default: none, run all epochs)")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6, help="epochs per variant (cosine schedule)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--out", type=str, default=None, help="keep runs here (default: a temp dir)")
    p.add_argument("--model", default="resnet34", choices=ARCHITECTURES)
    p.add_argument("--embedding_dim", type=int, default=None,
                   help="default: the architecture's usual size (registry)")
    p.add_argument("--train_dir", type=Path, default=DATA / "celeba_subset" / "aligned-160",
                   help="training crops (default: the shared box-aligned 160 px CelebA subset)")
    p.add_argument("--lfw_dir", type=Path, default=DATA / "lfw" / "lfw-mtcnn-160",
                   help="LFW crops (default: the shared box-aligned 160 px LFW)")
    p.add_argument("--lfw_pairs", type=Path, default=DATA / "lfw" / "pairs.txt",
                   help="pairs file (default: the shared pairs.txt, 6,000 pairs)")
    p.add_argument("--no_lfw_flip", action="store_true", help="LFW without flip TTA (half the cost)")
    p.add_argument("--valid_split", type=float, default=0.1, help="held-out fraction (default: 0.1)")
    p.add_argument("--warmup_epochs", type=float, default=None,
                   help="LR warm-up in epochs (default: the recipe's)")
    p.add_argument("--variants", default="center,softmax",
                   help="comma-separated, of: center (weight 0.01), softmax (weight 0)")
    args = p.parse_args()
    args.embedding_dim = args.embedding_dim or SPECS[args.model].embedding_dim
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(VARIANTS):
        sys.exit(f"--variants: choose from {', '.join(VARIANTS)}")
    if not args.train_dir.is_dir() or not args.lfw_dir.is_dir():
        sys.exit(f"real face data not found ({args.train_dir}, {args.lfw_dir}; set "
                 f"FACEIGNITE_SHARED_DATA)")
    out = Path(args.out or tempfile.mkdtemp(prefix="faceignite-real-"))
    results = {name: run_variant(name, VARIANTS[name], args, out) for name in variants}
    budget = f"{args.epochs} epochs" + (f" capped at {args.budget:.0f} s" if args.budget else "")
    print(f"\n{args.model} ({args.embedding_dim}-d) on {args.train_dir} at {args.image_size} px, "
          f"{budget} each; LFW {args.lfw_pairs} ({args.lfw_dir}), 10 folds, "
          f"{'no flip' if args.no_lfw_flip else 'flip TTA'}, L2 distance")
    both = variants == ["center", "softmax"]
    header = {"center": "softmax + center", "softmax": "softmax only"}
    print(f"{'metric':<20}" + "".join(f"{header[v]:>18}" for v in variants)
          + (f"{'difference':>12}" if both else ""))
    for label, key, scale in ROWS:
        values = [results[v].get(key) for v in variants]
        if any(v is None for v in values):
            continue
        line = f"{label:<20}" + "".join(f"{v * scale:>18.2f}" for v in values)
        if both:
            line += f"{(values[0] - values[1]) * scale:>+12.2f}"
        print(line)
    for name, m in results.items():
        print(f"ROC ({name}): {m['roc']}   wall {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
