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

``--ablation`` (issue 16, and the backbone comparison of issue 15) runs variants × seeds, each
evaluated on all 6,000 LFW pairs with the held-out compactness, one JSON line per run; with
``--budget S`` every run trains S wall-clock seconds with the LR annealed by a cosine in time,
so backbones of different speeds get the same CPU budget and all end it at LR ≈ 0:

    python bench/real_data_lfw.py --ablation center_w0.003 --seeds 0,1,2 --model mobilefacenet \
        --train_dir /tmp/celeba-fp112 --lfw_dir /tmp/lfw-fp112 --image_size 112 --budget 600 \
        --no_flip --threads 1 --results /tmp/backbones.jsonl      # BENCHMARKS.md, "112×112"
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from torch import nn

from ablation_table import append_result, paired_differences, read_results, run_key, summarize
from common import SHARED_DATA as DATA

from faceignite.models import ARCHITECTURES, SPECS
from handlers.training import main as train

ROWS = [("LFW accuracy", "lfw_accuracy", 100), ("± std", "lfw_accuracy_std", 100),
        ("TAR @ FAR=1e-3", "lfw_val_far1e-3", 100), ("TAR @ FAR=1e-2", "lfw_val_far1e-2", 100),
        ("AUC", "lfw_auc", 1), ("EER", "lfw_eer", 100), ("threshold (L2)", "lfw_threshold", 1),
        ("held-out accuracy", "val_accuracy", 100), ("epochs done", "epochs", 1),
        ("iterations done", "iterations", 1),
        ("train images/s", "train_images_per_s", 1), ("LFW images/s", "lfw_images_per_s", 1),
        ("wall s", "wall_s", 1)]
COMPARISON = {"center": 0.01, "softmax": 0.0}  # the --variants of the plain comparison


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
    from faceignite.verification import read_pairs

    return len(read_pairs(str(pairs_file)).keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=float, default=None,
                   help="cap on training seconds per variant (default: none, run all epochs); in "
                        "the ablation: train for this many wall-clock seconds, the LR annealed by a "
                        "cosine in time (the same CPU budget for every backbone)")
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
                   help="comma-separated, of: center (weight 0.01, the default before issue 16), "
                        "softmax (weight 0)")
    add_ablation_args(p)
    args = p.parse_args()
    if args.against is not None and not re.fullmatch(r"[^/]+/[^/]+", args.against):
        p.error(f"--against: expected MODEL/TRAIN_SET, e.g. resnet34/aligned-160, got {args.against!r}")
    missing = [f for f in (args.report or "").split(",") if f and not os.path.isfile(f)]
    if missing:
        p.error(f"--report: no such results file: {', '.join(missing)}")
    if args.ablation or args.report or args.centre_lag:
        return ablation_main(args)
    args.embedding_dim = args.embedding_dim or SPECS[args.model].embedding_dim
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(COMPARISON):
        sys.exit(f"--variants: choose from {', '.join(COMPARISON)}")
    if not args.train_dir.is_dir() or not args.lfw_dir.is_dir():
        sys.exit(f"real face data not found ({args.train_dir}, {args.lfw_dir}; set "
                 f"FACEIGNITE_SHARED_DATA)")
    out = Path(args.out or tempfile.mkdtemp(prefix="faceignite-real-"))
    results = {name: run_variant(name, COMPARISON[name], args, out) for name in variants}
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


# --- center-term ablation (issue 16): variants x seeds at an equal budget -------------------
# Each run trains on the CelebA subset (no trainer-side LFW validation), then embeds every image
# of the real LFW pairs once (flip TTA) and measures, from the same embeddings: verification
# with the raw embedding (L2) and with the L2-normalised one (the project's default; cosine on
# the raw embedding ranks pairs identically), and the held-out compactness (LFW identities are
# disjoint from CelebA's).  One JSON line per run is appended to --results, so an interrupted
# ablation resumes where it stopped and the table can be printed at any time (--report).

VARIANTS: dict[str, dict] = {
    # name: center_loss_weight λ, embedding BatchNorm affine, λ ramp epochs, centre lr α
    "softmax": dict(weight=0.0),
    "center_w0.001": dict(weight=0.001),
    "center_w0.003": dict(weight=0.003),               # the recipe's default since issue 16
    "center": dict(weight=0.01),                       # the recipe's default until issue 16
    "center_w0.03": dict(weight=0.03),
    "center_noaffine": dict(weight=0.01, affine=False),
    "softmax_noaffine": dict(weight=0.0, affine=False),
    "center_ramp": dict(weight=0.01, ramp_epochs=2),
    "center_alpha0.1": dict(weight=0.01, center_lr=0.1),
    # ours moves a centre by α·2·n_j/B of its gap per step (mean over the batch), Wen et al.'s
    # by α·n_j/(1+n_j): at B = 32 and n_j ≈ 1, α = 4 is about Wen's α = 0.5
    "center_alpha4": dict(weight=0.01, center_lr=4.0),
}
MAX_PER_IDENTITY = 10  # images per LFW identity in the compactness (George W Bush has 500+)


def add_ablation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("center-term ablation (issue 16)")
    g.add_argument("--ablation", type=str, default=None,
                   help=f"comma-separated variants to run, of {', '.join(VARIANTS)}")
    g.add_argument("--seeds", type=str, default="0,1,2", help="comma-separated seeds (ablation)")
    g.add_argument("--results", type=str, default=None,
                   help="JSON-lines file of ablation results (appended; runs already in it are "
                        "skipped); default OUT/ablation.jsonl")
    g.add_argument("--report", type=str, default=None,
                   help="print the mean ± std table of these JSON-lines results files "
                        "(comma-separated) and exit")
    g.add_argument("--against", type=str, default=None, metavar="MODEL/TRAIN_SET",
                   help="report: differences against this backbone and training set (e.g. "
                        "resnet34/aligned-160) at the same variant and seed, instead of softmax")
    g.add_argument("--columns", type=str, default=None,
                   help="comma-separated result keys to tabulate (default: all ABLATION_KEYS)")
    g.add_argument("--ablation_lr", type=float, default=1e-3, help="Adam lr of the ablation runs")
    g.add_argument("--ablation_ids", type=int, default=0,
                   help="train on this many CelebA identities (those with >= --ablation_min_images "
                        "images, shuffled with seed 0; default 0: all 299)")
    g.add_argument("--ablation_min_images", type=int, default=19)
    g.add_argument("--ablation_held_out", type=int, default=60,
                   help="with --ablation_ids: the first N shuffled identities are held out "
                        "(CelebA compactness and pairs), training uses the next --ablation_ids")
    g.add_argument("--no_flip", action="store_true", help="ablation: LFW without flip TTA")
    g.add_argument("--centre_lag", action="store_true",
                   help="for every run under --out: centres vs class means (see centre_lag)")
    g.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --budget counts in the ablation: wall-clock seconds (the default), "
                        "or this process's CPU seconds (time.process_time; with --threads 1, "
                        "seconds on one core however busy the machine is, so runs can share it)")
    g.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2; on an oversubscribed CPU 1 is ~10x faster)")


def shuffled_identities(min_images: int) -> list[str]:
    """CelebA identities with >= ``min_images`` images, shuffled with seed 0 (the split of
    tests/test_real_faces.py)."""
    celeba = DATA / "celeba_subset" / "aligned-160"
    ids = sorted(d for d in os.listdir(celeba) if len(os.listdir(celeba / d)) >= min_images)
    np.random.default_rng(0).shuffle(ids)
    return ids


def identity_subset(count: int, held_out: int, min_images: int, dest: Path, celeba: Path) -> Path:
    """A training root of ``count`` identities of the CelebA folder ``celeba`` (any alignment of
    the subset) after the first ``held_out`` of :func:`shuffled_identities`: per-image symbolic
    links under ``dest`` (never copied)."""
    ids = shuffled_identities(min_images)
    if len(ids) < held_out + count:
        sys.exit(f"--ablation_ids {count}: only {len(ids)} identities have >= {min_images} images")
    root = dest / f"{celeba.name}_{count}ids_after{held_out}_min{min_images}"
    for ident in ids[held_out:held_out + count]:
        (root / ident).mkdir(parents=True, exist_ok=True)
        for f in os.listdir(celeba / ident):
            if not (root / ident / f).exists():
                (root / ident / f).symlink_to(celeba / ident / f)
    return root


@torch.no_grad()
def celeba_held_out(model: nn.Module, identities: list[str], image_size: int, pairs_dir: Path,
                    celeba: Path) -> dict:
    """On CelebA identities (of the folder ``celeba``) not trained on: compactness of every
    image's L2-normalised embedding and the accuracy on 600 pairs of them (2 folds, no flip), as
    tests/test_real_faces.py measures them."""
    from faceignite.compactness import compactness
    from faceignite.verification import create_pairs_evaluator
    from faceignite.data.normalization import of_model
    from faceignite.verification.evaluator import image_loader
    from faceignite.verification.make_pairs import make_pairs_set
    if not (pairs_dir / "pairs.txt").exists():
        make_pairs_set(str(celeba), str(pairs_dir), identities, folds=2, per_fold=150, seed=0)
    paths = [str(celeba / i / f) for i in identities for f in sorted(os.listdir(celeba / i))]
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    model.eval()
    e = torch.zeros(len(paths), model.embedding_dim)
    for images, index, _ in image_loader(paths, image_size, batch_size=256,
                                         normalization=of_model(model)):
        e[index] = model.embed(images)
    acc = create_pairs_evaluator(model.embed, str(pairs_dir), torch.device("cpu"), image_size).run()
    return {"celeba_ratio": compactness(e.numpy(), labels).ratio, "celeba_accuracy": acc.accuracy,
            "celeba_auc": acc.auc}


class RunProbe:
    """Trainer hooks of one ablation run: swaps the embedding BatchNorm, ramps λ, anneals the LR
    over a wall-clock budget, times the training steps, keeps the model and criterion to evaluate
    them after training."""

    def __init__(self, affine: bool = True, ramp_epochs: int = 0, budget_s: float = 0.0,
                 clock=time.perf_counter):
        self.affine, self.ramp_epochs, self.budget_s, self.clock = affine, ramp_epochs, budget_s, clock
        self.model: nn.Module | None = None
        self.criterion: nn.Module | None = None
        self.started = self.ended = 0.0
        self.iterations = self.epochs = 0

    def __call__(self, trainer, state) -> None:
        self.model, self.criterion = state.model, state.criterion
        if not self.affine:  # FaceNet-style bottleneck: BatchNorm without learnable scale/shift
            old = self.model.embedding[-1]
            self.model.embedding[-1] = nn.BatchNorm1d(old.num_features, affine=False)

        @trainer.on(Events.STARTED)
        def start_clock(engine) -> None:
            self.started = self.clock()

        @trainer.on(Events.COMPLETED)
        def stop_clock(engine) -> None:
            self.ended = self.clock()
            self.iterations = engine.state.iteration
            self.epochs = engine.state.iteration / engine.state.epoch_length

        if self.budget_s and self.clock is time.process_time:  # CPU budget: the probe stops
            @trainer.on(Events.ITERATION_COMPLETED)           # the run (--max_time is wall time)
            def stop_at_budget(engine) -> None:
                if self.clock() - self.started >= self.budget_s:
                    engine.terminate()

        if self.budget_s:  # cosine in seconds: every backbone ends its budget at LR ≈ 0
            optimizer = state.optimizers["model"]
            base = [g["lr"] for g in optimizer.param_groups]

            @trainer.on(Events.ITERATION_STARTED)
            def anneal(engine) -> None:
                progress = min(1.0, (self.clock() - self.started) / self.budget_s)
                for group, lr in zip(optimizer.param_groups, base):
                    group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * progress))
        if self.ramp_epochs:
            target = self.criterion.center_loss_weight

            @trainer.on(Events.ITERATION_STARTED)
            def ramp(engine) -> None:
                # linear 0 → λ over ramp_epochs; never exactly 0, so the centres (whose gradient
                # is divided by the current λ) follow the class means from the start
                progress = (engine.state.iteration - 1) / (self.ramp_epochs * engine.state.epoch_length)
                self.criterion.center_loss_weight = target * min(1.0, max(progress, 1e-3))


@torch.no_grad()
def embed_pairs_images(model: nn.Module, paths: list[str], image_size: int, flip: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(raw, L2-normalised) embeddings of ``paths``; with ``flip`` TTA: raw = mean of the
    image's and its mirror's raw embeddings, normalised as the project's evaluator does it."""
    from faceignite.data.normalization import of_model
    from faceignite.verification.evaluator import image_loader
    model.eval()
    raw = np.zeros((len(paths), model.embedding_dim), np.float32)
    norm = np.zeros_like(raw)
    for images, index, _ in image_loader(paths, image_size, batch_size=256,
                                         normalization=of_model(model)):
        f = model(torch.cat([images, torch.flip(images, dims=[3])]) if flip else images).float()
        a, b = (f[: len(index)], f[len(index):]) if flip else (f, f)
        raw[index.numpy()] = ((a + b) / 2).numpy()
        nf = nn.functional.normalize
        norm[index.numpy()] = nf(nf(a, dim=1) + nf(b, dim=1), dim=1).numpy()
    return raw, norm


def evaluate_run(model: nn.Module, criterion: nn.Module, image_size: int, flip: bool = True,
                 lfw_dir: Path = DATA / "lfw" / "lfw-mtcnn-160",
                 lfw_pairs: Path = DATA / "lfw" / "pairs.txt") -> dict:
    """Verification (raw and normalised) and compactness on the real LFW pairs' images, the
    embedding rate (images/s, one forward per image, two with ``flip``), and the scales the
    hypotheses are about: feature norm, BatchNorm |γ|, centre norm."""
    from faceignite.compactness import compactness
    from faceignite.verification.metrics import evaluate_distances, evaluate_embeddings
    from faceignite.verification.pairs import read_pairs, resolve_images
    pairs, paths = resolve_images(read_pairs(str(lfw_pairs)), str(lfw_dir))
    started = time.perf_counter()
    raw, norm = embed_pairs_images(model, paths, image_size, flip)
    out: dict = {"lfw_images": len(paths),
                 "lfw_images_per_s": len(paths) * (2 if flip else 1) / (time.perf_counter() - started)}
    # the library's L2 always normalises first; the raw-embedding L2 is computed here
    out.update(evaluate_embeddings(norm, pairs, "l2").metrics(prefix="norm"))
    d_raw = np.linalg.norm(raw[pairs.left] - raw[pairs.right], axis=1)
    out.update(evaluate_distances(d_raw, pairs.issame, pairs.folds, "l2").metrics(prefix="raw"))
    ident = np.array([os.path.basename(os.path.dirname(p)) for p in paths])
    keep = np.zeros(len(paths), bool)
    for name in np.unique(ident):
        keep[np.flatnonzero(ident == name)[:MAX_PER_IDENTITY]] = True
    for kind, e in (("raw", raw), ("norm", norm)):
        c = compactness(e[keep], ident[keep])
        out.update({f"intra_{kind}": c.intra, f"inter_{kind}": c.inter, f"ratio_{kind}": c.ratio})
    out["compactness_ids"], out["compactness_images"] = c.num_classes, c.num_images
    out["feature_norm"] = float(np.linalg.norm(raw, axis=1).mean())
    bn = model.embedding[-1]
    out["bn_gamma_abs"] = float(bn.weight.detach().abs().mean()) if bn.affine else 1.0
    out["bn_beta_abs"] = float(bn.bias.detach().abs().mean()) if bn.affine else 0.0
    if hasattr(criterion, "center_loss"):
        out["center_norm"] = float(criterion.center_loss.centers.detach().norm(dim=1).mean())
        out["classifier_norm"] = float(criterion.classifier.weight.detach().norm(dim=1).mean())
    return out


def ablation_run(variant: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Train one variant at one seed (Adam, no warm-up; cosine over ``--epochs``, or over
    ``--budget`` seconds of wall time) and evaluate it."""
    v = VARIANTS[variant]
    probe = RunProbe(affine=v.get("affine", True), ramp_epochs=v.get("ramp_epochs", 0),
                     budget_s=args.budget or 0.0,
                     clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    name = f"{args.model}_{args.train_dir.name}_{variant}_s{seed}"
    root = (identity_subset(args.ablation_ids, args.ablation_held_out, args.ablation_min_images,
                            out, args.train_dir) if args.ablation_ids else args.train_dir)
    wall_limit = ["--max_time", str(args.budget)] if args.clock == "wall" else []
    schedule = (["--epochs", "1000", *wall_limit, "--lr_scheduler", "none"]
                if args.budget else ["--epochs", str(args.epochs), "--lr_scheduler", "cosine"])
    argv = ["--dataroot", str(root), "--model", args.model,
            "--embedding_dim", str(args.embedding_dim), *schedule,
            "--image_size", str(args.image_size),
            "--batch_size", str(args.batch_size), "--seed", str(seed),
            "--optimizer", "adam", "--lr", str(args.ablation_lr),
            "--warmup_epochs", "0", "--valid_split", "0", "--num_workers", "0",
            "--device", "cpu", "--n_saved", "1", "--log_interval", "1000",
            "--center_loss_weight", str(v["weight"]),
            "--center_loss_lr", str(v.get("center_lr", 0.5)),
            "--clearml", "off", "--output_dir", str(out / name)]
    started = time.perf_counter()
    metrics = train(argv, name=f"celeba_{name}", hooks=[probe])
    trained = time.perf_counter() - started
    steps_s = probe.ended - probe.started
    result = {"variant": variant, "seed": seed, **v, "model": args.model,
              "embedding_dim": args.embedding_dim, "train_set": args.train_dir.name,
              "lfw_set": args.lfw_dir.name, "image_size": args.image_size,
              "train_ids": args.ablation_ids or 299, "flip": not args.no_flip,
              "epochs": round(probe.epochs, 2), "budget_s": args.budget, "clock": args.clock,
              "iterations": probe.iterations, "batch_size": args.batch_size, "train_s": trained,
              "train_images_per_s": probe.iterations * args.batch_size / steps_s,
              "train_accuracy": metrics.get("train_accuracy")}
    result.update(evaluate_run(probe.model, probe.criterion, args.image_size, not args.no_flip,
                               args.lfw_dir, args.lfw_pairs))
    if args.ablation_ids:  # held-out CelebA identities (the real-face test's measurements)
        held = shuffled_identities(args.ablation_min_images)[:args.ablation_held_out]
        result.update(celeba_held_out(probe.model, held, args.image_size,
                                      out / f"celeba_pairs_{args.train_dir.name}", args.train_dir))
    result["wall_s"] = time.perf_counter() - started
    return result


@torch.no_grad()
def centre_lag(run_dir: Path, train_root: Path, image_size: int) -> dict:
    """Where the trained centres sit against the class means of the training embeddings they
    stand for (last checkpoint of ``run_dir``, eval mode, raw embeddings, no augmentation):
    ``lag`` = mean_j ||c_j - mu_j|| over ``spread`` = mean ||f_i - mu_{y_i}||; ``lag`` >> 1 means
    the center term pulls features towards points far from their class (not towards it)."""
    from faceignite.checkpoint.files import latest_checkpoint, load_checkpoint
    from faceignite.data.normalization import of_model
    from faceignite.verification.evaluator import image_loader
    from faceignite.models import build_model
    ckpt = load_checkpoint(latest_checkpoint(str(run_dir)))
    model = build_model(ckpt["model_architecture"], ckpt["embedding_dimension"])
    state = ckpt["model_state_dict"]
    if "embedding.1.weight" not in state:  # an affine=False run
        model.embedding[1] = nn.BatchNorm1d(model.embedding_dim, affine=False)
    model.load_state_dict(state)
    centers = ckpt["criterion_state_dict"]["center_loss.centers"].double()
    classes = sorted(os.listdir(train_root))  # the index's label order (checked: train accuracy)
    paths = [str(train_root / c / f) for c in classes for f in sorted(os.listdir(train_root / c))]
    labels = torch.tensor([classes.index(os.path.basename(os.path.dirname(p))) for p in paths])
    model.eval()
    f = torch.zeros(len(paths), model.embedding_dim, dtype=torch.float64)
    for images, index, _ in image_loader(paths, image_size, batch_size=256,
                                         normalization=of_model(model)):
        f[index] = model(images).double()
    mu = torch.stack([f[labels == j].mean(0) for j in range(len(classes))])
    w = ckpt["criterion_state_dict"]["classifier.weight"].double()
    b = ckpt["criterion_state_dict"]["classifier.bias"].double()
    lag = (centers - mu).norm(dim=1).mean()
    spread = (f - mu[labels]).norm(dim=1).mean()
    return {"lag": float(lag), "spread": float(spread), "lag_over_spread": float(lag / spread),
            "mean_norm": float(mu.norm(dim=1).mean()), "center_norm": float(centers.norm(dim=1).mean()),
            "cos_center_mean": float(nn.functional.cosine_similarity(centers, mu).mean()),
            "train_accuracy_eval": float(((f @ w.T + b).argmax(1) == labels).double().mean())}


def ablation_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.centre_lag:  # post-hoc, from the runs' last checkpoints under --out
        out = Path(args.out)
        root = next(out.glob("*ids_after*"))
        for run in sorted(out.glob("*_s*/celeba_*")):
            print(run.parent.name, json.dumps(centre_lag(run, root, args.image_size)), flush=True)
        return
    columns = args.columns.split(",") if args.columns else None
    against = tuple(args.against.split("/", 1)) if args.against else None
    if args.report:
        rows = [r for f in args.report.split(",") for r in read_results(f)]
        print(summarize(rows, columns, list(VARIANTS)) + "\n\n"
              + paired_differences(rows, against=against))
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="faceignite-ablation-"))
    results = Path(args.results or out / "ablation.jsonl")
    results.parent.mkdir(parents=True, exist_ok=True)
    args.embedding_dim = args.embedding_dim or SPECS[args.model].embedding_dim
    this = {"model": args.model, "train_set": args.train_dir.name,
            "train_ids": args.ablation_ids or 299, "image_size": args.image_size}
    done = {run_key(r) for r in read_results(results)}
    variants = args.ablation.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--ablation: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: every variant per seed
        for variant in variants:
            if run_key({**this, "variant": variant, "seed": seed}) in done:
                continue
            r = ablation_run(variant, seed, args, out)
            append_result(results, r)
            print(f"{variant} seed {seed}: acc {r['norm_accuracy']:.4f} raw {r['raw_accuracy']:.4f} "
                  f"TAR@1e-3 {r['norm_val_far1e-3']:.4f} ratio {r['ratio_norm']:.3f} "
                  f"|γ| {r['bn_gamma_abs']:.3f} wall {r['wall_s']:.0f} s", flush=True)
    rows = read_results(results)
    print(summarize(rows, columns, list(VARIANTS)) + "\n\n"
          + paired_differences(rows, against=against))

if __name__ == "__main__":
    main()
