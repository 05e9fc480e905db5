"""Real faces: train ResNet-34 on the CelebA subset for a fixed budget, validate on real LFW.

Runs the experiment twice with the same budget and options — center loss (the recipe) and plain
softmax (``--center_loss_weight 0``) — so the centre term's contribution is measured, and prints
the LFW table of both (6,000 pairs, 10 folds) with the ROC PNG paths.  The budget is a number of
epochs (the same work for both, fair on a shared machine), optionally capped by ``--budget``
seconds of wall time.

    python bench/real_data_lfw.py                                  # 2 x 6 epochs at 64 px
    python bench/real_data_lfw.py --image_size 112 --epochs 5 --budget 1500   # BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA as DATA

from handlers.standard import main as train

ROWS = [("LFW accuracy", "lfw_accuracy", 100), ("± std", "lfw_accuracy_std", 100),
        ("TAR @ FAR=1e-3", "lfw_val_far1e-3", 100), ("TAR @ FAR=1e-2", "lfw_val_far1e-2", 100),
        ("AUC", "lfw_auc", 1), ("EER", "lfw_eer", 100), ("threshold (L2)", "lfw_threshold", 1),
        ("held-out accuracy", "val_accuracy", 100), ("epochs done", "epochs", 1)]


def run_variant(name: str, weight: float, args: argparse.Namespace, out: Path) -> dict:
    argv = ["--dataroot", str(DATA / "celeba_subset" / "aligned-160"),
            "--lfw", str(DATA / "lfw" / "lfw-mtcnn-160"), "--lfw_pairs", str(DATA / "lfw" / "pairs.txt"),
            "--image_size", str(args.image_size), "--epochs", str(args.epochs),
            *(["--max_time", str(args.budget)] if args.budget else []),
            "--batch_size", str(args.batch_size),
            "--lr_scheduler", "cosine", "--valid_split", "0.1", "--lfw_flip",
            "--lfw_validation_epoch_interval", str(10 ** 6),  # once, at the end of the budget
            "--center_loss_weight", str(weight), "--clearml", "off", "--output_dir", str(out / name)]
    started = time.perf_counter()
    metrics = train(argv, name=f"celeba_{name}")
    metrics["wall_s"] = time.perf_counter() - started
    run_dir = next((out / name).glob(f"celeba_{name}-*"))
    log = (run_dir / "run.log").read_text()
    metrics["epochs"] = len(re.findall(r" epoch \d+/\d+ \| loss", log))
    metrics["roc"] = str(next(iter(sorted(run_dir.glob("roc_lfw_*.png"))), ""))
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=float, default=None,
                   help="cap on training seconds per variant (default: none, run all epochs)")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6, help="epochs per variant (cosine schedule)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--out", type=str, default=None, help="keep runs here (default: a temp dir)")
    args = p.parse_args()
    if not (DATA / "celeba_subset" / "aligned-160").is_dir() or not (DATA / "lfw").is_dir():
        sys.exit(f"real face data not found under {DATA} (set FACEIGNITE_SHARED_DATA)")
    out = Path(args.out or tempfile.mkdtemp(prefix="faceignite-real-"))
    results = {name: run_variant(name, w, args, out)
               for name, w in (("center", 0.01), ("softmax", 0.0))}
    budget = f"{args.epochs} epochs" + (f" capped at {args.budget:.0f} s" if args.budget else "")
    print(f"\nResNet-34 on CelebA subset (299 ids, 6,276 images) at {args.image_size} px, "
          f"{budget} each; LFW 6,000 pairs, 10 folds, flip TTA, L2 distance")
    print(f"{'metric':<20}{'softmax + center':>18}{'softmax only':>14}{'difference':>12}")
    for label, key, scale in ROWS:
        a, b = results["center"].get(key), results["softmax"].get(key)
        if a is None or b is None:
            continue
        print(f"{label:<20}{a * scale:>18.2f}{b * scale:>14.2f}{(a - b) * scale:>+12.2f}")
    for name, m in results.items():
        print(f"ROC ({name}): {m['roc']}   wall {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
