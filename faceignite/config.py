"""The one source of option defaults: the :data:`OPTIONS` table.

Every training option is one :class:`Option` row: its flag, group, type, default (and the
default on the built-in dataset when it differs: ``builtin``), help text, range check, and —
where it differs from the original ``train.py`` — the original default and why it changed.
The argparse parsers (:func:`get_args_parser`, and the command parsers through
:func:`add_options` / :func:`add_runtime_args`), their help texts, the range checks
(:func:`check_option_ranges`) and the README's defaults table (:func:`defaults_table`) are all made
from it.  An experiment changes a default by passing ``name=value`` to :func:`parse_args`
(one value for real and built-in data alike).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from faceignite.errors import FaceIgniteError
from faceignite.models import ARCHITECTURES
from faceignite.models.registry import SPECS

SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential")
MISSING: Any = object()  # no separate built-in-data default


def plain_config(config: Mapping | argparse.Namespace | None,
                 other: Callable[[Any], Any] | None = None) -> dict:
    """Options as JSON-plain values (``other(value)`` for the rest, or left out when ``other`` is
    None), leaving out every option whose name looks like a credential (:data:`SECRET_WORDS`).

    Checkpoints, ClearML and TensorBoard all record the options through this one filter."""
    if isinstance(config, argparse.Namespace):
        config = vars(config)
    plain: dict[str, Any] = {}
    for k, v in (config or {}).items():
        k = str(k)
        if any(w in k.lower() for w in SECRET_WORDS):
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            plain[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            plain[k] = list(v)
        elif other is not None:
            plain[k] = other(v)
    return plain


Group = TypeVar("Group")


def options_group(cfg: argparse.Namespace, group: type[Group]) -> Group:
    """The typed option group ``group`` (a dataclass whose field names are option names, e.g.
    :class:`~faceignite.data.loaders.DataOptions`) filled from the parsed options ``cfg``.

    The composition calls it where it calls the library, so that the library gets what it needs
    and nothing more (never the whole namespace).  A field that ``cfg`` lacks (a parser of a
    command that has not that option) keeps the field's default."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(group)
              if hasattr(cfg, f.name)}
    return group(**values)


def default_num_workers() -> int:
    """Half the CPUs, at most 8, at least 0 (2-core laptops load in the main process)."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


# --------------------------------------------------------------------------- range checks
Check = Callable[[Any], "str | None"]  # the problem with a value, or None


def at_least(low: float, why: str = "") -> Check:
    return lambda v: None if v >= low else f"must be at least {low}{why}"


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def fraction(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def rate(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def normalization(v: Any) -> str | None:
    """``--normalize``: a named convention or MEAN,STD (see faceignite.data.normalization)."""
    from faceignite.data.normalization import parse_normalize

    try:
        parse_normalize(v)
    except FaceIgniteError:
        return "use insightface, facenet, imagenet, or MEAN,STD in pixel units (e.g. 127.5,128)"
    return None


def between(low: float, high: float, why: str = "") -> Check:
    """``low <= v <= high``."""
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}]{why}"


def momentum_range(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1) (0.9 is usual)"


MAX_IMAGE_SIZE = 1024      # pixels: a batch of 64 such images is 0.8 GB of float32 input
MAX_EMBEDDING_DIM = 8192   # the field uses 128-512; a classifier row per identity of this size


def all_non_negative(v: Any) -> str | None:
    return None if all(x >= 0 for x in v) else "must not be negative"


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Option:
    """One command-line option: everything argparse, the README and the checks need."""

    flags: tuple[str, ...]
    group: str
    help: str
    default: Any = None
    builtin: Any = MISSING          # default on the built-in dataset (no --dataroot)
    type: Callable | None = None
    choices: Sequence | None = None
    action: str | None = None       # e.g. "store_true"
    nargs: str | None = None
    metavar: str | None = None
    check: Check | None = None      # range check, run by check_option_ranges
    default_text: str | None = None  # the default in words, when not a plain value
    original: str | None = None     # the original train.py's default, when it differs
    why: str | None = None          # why it changed (README table)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.flags[0].lstrip("-")

    def describe_default(self, default: Any = MISSING) -> str:
        """The default as the help text and the README state it."""
        if default is not MISSING:
            return _plain(default)
        if self.default_text is not None:
            return self.default_text
        text = _plain(self.default)
        if self.builtin is not MISSING:
            text += f"; {_plain(self.builtin)} for the built-in dataset"
        return text


def _plain(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(_plain(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


GROUPS = {
    "config": "configuration file",
    "data": "data",
    "model": "model",
    "optim": "optimisation (original defaults in the README)",
    "loss": "losses (triplet, ArcFace, CosFace experiments)",
    "runtime": "runtime",
    "lfw": "LFW validation",
    "checkpoint": "checkpoints",
    "control": "long runs",
    "tracking": "tracking",
}

def _margin_text() -> str:
    from faceignite.losses import ArcFace, CosFace, TripletLoss
    return (f"the loss's own: triplet {TripletLoss.default_margin} (L2 distance), ArcFace "
            f"{ArcFace.default_margin} (radians), CosFace {CosFace.default_margin} (cosine)")


OPTIONS: tuple[Option, ...] = (
    # configuration file
    Option(("--config",), "config", "JSON or YAML file (.json, .yaml, .yml) of option values: "
           "these option names, or the second original system's keys (README); flags on the "
           "command line win over it, it wins over the experiment's defaults; a run's "
           "config.json reruns that run", None, type=str, metavar="FILE"),
    # data
    Option(("--dataroot", "-d"), "data", "The training folder, one sub-folder per "
           "identity; or an insightface RecordIO set: a .rec file (its .idx beside it) or a "
           "folder holding train.rec/train.idx (+ property)", None, type=str,
           default_text="a built-in generated dataset, for a quick try"),
    Option(("--valid_split",), "data", "Fraction of each identity held out for validation", 0.01,
           builtin=0.2, type=float, check=fraction),
    Option(("--image_size",), "data", "Input size in pixels: 224, 160 or 112", 224, builtin=64,
           type=int, check=between(1, MAX_IMAGE_SIZE, " pixels"),
           default_text="224; a RecordIO --dataroot's size from its "
           "property file (112 for insightface's sets); 64 for the built-in dataset"),
    Option(("--batch_size",), "data", "Batch size of all processes together", 64, builtin=32,
           type=int, check=at_least(2, " (BatchNorm needs two images)")),
    Option(("--num_workers",), "data", "Number of workers for data loaders", default_num_workers(),
           type=int, check=at_least(0), default_text="half the CPUs, max 8; 0 on 2 CPUs",
           original="4", why="one OpenCV worker decodes ~1,300 img/s at 112 px"),
    Option(("--augment",), "data", "Training augmentation: flip (horizontal flip only, for "
           "five-point crops), box (random resized crop of 80 to 100 percent of the area, flip, "
           "colour jitter, for box "
           "crops) or none", None, type=str, choices=("flip", "box", "none"),
           default_text="flip for a RecordIO set or a folder the alignment tool wrote with "
           "--template arcface; box otherwise"),
    Option(("--index_cache",), "data", "File caching the image index of --dataroot", None,
           type=str, default_text="<output_dir>/cache/index-<hash>.json"),
    # model
    Option(("--model",), "model", "The model architecture for training", "resnet34", type=str,
           choices=ARCHITECTURES),
    Option(("--embedding_dim",), "model", "Dimension of the embedding vector", None, type=int,
           check=between(1, MAX_EMBEDDING_DIM),
           default_text="MODEL_EMBEDDING",  # from the registry, by _help
           original="128", why="the architecture's own size, so published weights fit: 512 for "
           "the iResNets (insightface's), 128 for the ResNets and MobileFaceNet (as before)"),
    Option(("--pretrained",), "model", "ImageNet weights for the backbone: a local .pth file, or "
           "'download' for torchvision's weights", None, type=str,
           default_text="none, random initialisation", original="flag (download)",
           why="a local weights file or `download`: no hidden network access"),
    Option(("--normalize",), "model", "Input normalisation: insightface ((x-127.5)/127.5), "
           "facenet ((x-127.5)/128), imagenet (mean/std), or MEAN,STD in pixel units; RGB", None,
           type=str, check=normalization, default_text="the architecture's own: insightface for r*/iresnet*/mbf/"
           "mobilefacenet, facenet for inception_resnet_v1, imagenet for resnet*"),
    # optimisation
    Option(("--epochs",), "optim", "Training epochs", 30, builtin=8, type=int,
           check=at_least(1, " (0 would save an untrained model)"), original="275", why="30 VGGFace2 epochs ≈ 1.5 M iterations at batch 64, past where "
           "the schedule has converged"),
    Option(("--optimizer",), "optim", "Optimizer of the model", "sgd", type=str,
           choices=("sgd", "adam", "adagrad"), original="adam (implicit)",
           why="SGD + momentum 0.9 is what the center-loss results that reach 99 % used (Wen et "
           "al.; davidsandberg's VGGFace2 models); Adam with lr 0.05 is far too hot"),
    Option(("--lr",), "optim", "Peak learning rate of the model", 0.1, type=float, check=positive,
           original="0.05 (Adam)", why="standard ResNet SGD rate at batch 64; scale linearly "
           "with the global batch"),
    Option(("--backbone_lr_scale",), "optim", "LR of the backbone (and embedding) relative to "
           "--lr, e.g. 0.1 to fine-tune a loaded network under a new classifier", 1.0,
           type=float, check=at_least(0)),
    Option(("--momentum",), "optim", "SGD momentum", 0.9, type=float, check=momentum_range),
    Option(("--adam_beta1",), "optim", "Adam's beta1", 0.9, type=float, check=fraction),
    Option(("--adagrad_lr_decay",), "optim", "Adagrad's lr_decay", 0.0, type=float,
           check=at_least(0)),
    Option(("--weight_decay",), "optim", "Weight decay of the model, never of the centres", 5e-4,
           type=float, check=at_least(0), original="0",
           why="the field's value; none on biases/BN/centres (decaying centres pulls them to 0)"),
    Option(("--lr_scheduler",), "optim", "LR schedule after warm-up", "multistep", type=str,
           choices=("multistep", "step", "cosine", "none"), original="none",
           why="1-epoch warm-up, then ×0.1 at 50/75/90 %: davidsandberg's stepped VGGFace2 "
           "schedule (÷10 twice), with warm-up for a random init"),
    Option(("--warmup_epochs",), "optim", "Linear LR warm-up length in epochs", 1.0, type=float,
           check=at_least(0)),
    Option(("--lr_milestones",), "optim", "multistep: epochs (or fractions of --epochs when < 1) "
           "where the LR is multiplied by --lr_gamma", [0.5, 0.75, 0.9], type=float, nargs="+",
           check=all_non_negative),
    Option(("--lr_step",), "optim", "step: epochs per LR step", 10, type=int, check=at_least(1)),
    Option(("--lr_gamma",), "optim", "LR decay factor", 0.1, type=float, check=positive),
    Option(("--center_loss_lr",), "optim", "Learning rate of the centres, own SGD optimizer", 0.5,
           type=float, check=at_least(0), original="0.5 (Adam)",
           why="Wen et al.'s α = 0.5 with plain SGD (gradients ÷ λ); Adam's normalisation "
           "breaks the centre update rule"),
    Option(("--center_loss_weight",), "optim", "Center loss weight lambda", 0.003, type=float,
           check=at_least(0), original="0.003",
           why="kept: 3 seeds here put it level with softmax on LFW (+0.5 ± 0.3 points) where "
               "0.01 lost 0.4 ± 0.9 (BENCHMARKS.md, center-loss ablation); it is already 2x "
               "Wen et al.'s weight in our sum-over-dimensions convention"),
    Option(("--label_smoothing",), "optim", "Label smoothing of the cross-entropy term", 0.0,
           type=float, check=fraction),
    # losses
    Option(("--margin",), "loss", "Margin of the loss", None, type=float, check=at_least(0),
           default_text="MARGIN"),  # filled from the loss classes by _help
    Option(("--scale",), "loss", "ArcFace/CosFace logit scale s", 64.0, type=float, check=positive),
    Option(("--triplet_mining",), "loss", "Triplets: mined online inside each batch "
           "(batch_hard, semi_hard), or --n_triplets random triplets per epoch (random, the "
           "second original system's)", "semi_hard", type=str,
           choices=("batch_hard", "semi_hard", "random"),
           default_text="semi_hard; random when --n_triplets is given"),
    Option(("--n_triplets",), "loss", "--triplet_mining random: random (anchor, positive, "
           "negative) triplets per epoch; --batch_size then counts triplets", None, type=int,
           check=positive, default_text="one per training image"),
    Option(("--identities_per_batch",), "loss", "P x K batches: identities per batch", None,
           type=int, metavar="P",  # checked by the P x K sampler
           default_text="--batch_size / --images_per_identity"),
    Option(("--images_per_identity",), "loss", "P x K batches: images per identity; setting it "
           "turns P x K batches on", None, type=int, metavar="K",
           default_text="off, plain shuffled batches"),
    Option(("--partial_fc",), "loss", "Partial FC: shard the classifier and the centres over the "
           "processes (center, ArcFace, CosFace losses)", False, action="store_true"),
    Option(("--sample_rate",), "loss", "With --partial_fc: share of the classes each training "
           "step uses (every class of the batch plus random others)", 1.0, type=float,
           check=rate),
    # runtime
    Option(("--seed",), "runtime", "Random seed", 0, type=int, check=between(0, 2**32 - 1)),
    Option(("--device",), "runtime", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'",
           "auto", type=str),
    Option(("--gpus",), "runtime", "GPUs to train on, one process each, e.g. 0,1 (the second "
           "original system's gpu_id); the CPU, with a warning, on a machine without CUDA", None,
           type=str, metavar="IDS", default_text="--device's"),
    Option(("--amp",), "runtime", "Automatic mixed precision on CUDA", "off", type=str,
           choices=("off", "bf16", "fp16")),
    Option(("--channels_last",), "runtime", "Use channels_last memory format", False,
           action="store_true"),
    Option(("--compile",), "runtime", "torch.compile the model", False, action="store_true"),
    Option(("--output_dir",), "runtime", "Folder of the run folders (checkpoints, logs, ROC "
           "plots) and of their caches (cache/)", "runs", type=str, default_text="runs"),
    Option(("--name",), "runtime", "Name of the run folder in --output_dir (a new folder: "
           "refused when it exists; resume with --resume_path)", None, type=str,
           default_text="<experiment>-<model>-<time>, the model left out when the experiment "
           "is named after it"),
    Option(("--backend",), "runtime", "Distributed backend: auto = nccl on GPUs (gloo on CPU) "
           "when started by torchrun or with --nproc_per_node > 1, else one plain process; give "
           "nccl/gloo explicitly under SLURM srun", "auto", type=str,
           choices=("auto", "nccl", "gloo", "none")),
    Option(("--nproc_per_node",), "runtime", "Spawn this many training processes on this "
           "machine (Ignite's idist.Parallel), e.g. one per GPU; not with torchrun", 1, type=int,
           check=at_least(1)),
    Option(("--start_method",), "runtime", "How --nproc_per_node starts its processes: "
           "spawn (a new interpreter each, 3-4 CPU-s of imports; safe everywhere), fork (copies "
           "of this process, started at once; CPU runs on Linux) or forkserver (copies of one "
           "new interpreter)", "spawn", type=str, choices=("spawn", "fork", "forkserver")),
    Option(("--sync_bn",), "runtime", "Several processes: SyncBatchNorm, batch statistics over "
           "all of them", False, action="store_true"),
    # LFW validation
    Option(("--lfw",), "lfw", "The Labeled Faces in the Wild folder (one sub-folder per person, "
           "pairs.txt inside)",
           None, type=str, default_text="the built-in pairs set when --dataroot is not given"),
    Option(("--lfw_pairs",), "lfw", "Pairs file", None, type=str,
           default_text="pairs.txt or lfw_pairs.txt inside --lfw"),
    Option(("--lfw_batch_size",), "lfw", "Batch size for LFW dataset", 128, type=int,
           check=at_least(1), original="12", why="inference batches; memory is not an issue"),
    Option(("--lfw_validation_epoch_interval",), "lfw", "Perform LFW validation every n epoch "
           "interval", 1, type=int, check=at_least(0), original="5",
           why="an epoch of VGGFace2 is long; `--val_interval N` adds iteration-level checks"),
    Option(("--lfw_skip_missing",), "lfw", "Skip pairs whose images are missing (logged) instead "
           "of failing", False, action="store_true"),
    Option(("--lfw_flip",), "lfw", "Horizontal-flip test-time augmentation (embedding + "
           "mirror)", False, action="store_true"),
    Option(("--distance",), "lfw", "Distance between L2-normalised embeddings", "l2", type=str,
           choices=("l2", "cosine")),
    Option(("--val_targets",), "lfw", "Verification sets validated with --lfw (after it), each "
           "an insightface .bin file or an LFW-format folder, as PATH or NAME=PATH; metrics "
           "<name>_accuracy ... named NAME, else after the file stem or folder", None, type=str,
           nargs="+", metavar="TARGET", default_text="none; replaces the built-in pairs set"),
    Option(("--val_pairs",), "lfw", "The pairs file of a folder target stored elsewhere, as "
           "NAME=PAIRS_FILE (NAME of --val_targets)", None, type=str, nargs="+",
           metavar="NAME=PAIRS", default_text="pairs.txt or lfw_pairs.txt inside the folder"),
    Option(("--best_by",), "lfw", "Target that picks the best checkpoint and drives "
           "--early_stopping: its name (its accuracy) or <name>_accuracy / <name>_auc", None,
           type=str, metavar="NAME",
           default_text="the first target's accuracy (lfw_accuracy with --lfw); val_accuracy "
           "without targets"),
    # checkpoints
    Option(("--resume_path",), "checkpoint", "A checkpoint (or a run folder: its latest) to "
           "resume from, in its own run folder; 'auto': the newest complete checkpoint under "
           "--output_dir (given explicitly), or a new run when there is none", None, type=str),
    Option(("--finetune",), "checkpoint", "With --resume_path: load the backbone only (other "
           "classes/embedding size), in a new run folder", False, action="store_true"),
    Option(("--n_saved",), "checkpoint", "Checkpoints kept", 3, type=int, check=at_least(1)),
    # commands that read a run folder (evaluate, embed, export, ijb, verify): not training
    Option(("--which",), "inference", "Which checkpoint of a run folder given as --checkpoint: "
           "its best (by the run's --best_by) or its latest", "best", type=str,
           choices=("best", "latest"), default_text="best (the latest when the run has none)"),
    # long runs
    Option(("--log_interval",), "control", "Iterations between log lines and tracked scalars",
           50, type=int, check=at_least(0)),
    Option(("--val_interval",), "control", "Iterations between held-out/LFW validations, "
           "besides the epoch interval", 0, type=int, check=at_least(0),
           default_text="0 = epochs only"),
    Option(("--save_interval",), "control", "Iterations between checkpoints, besides every "
           "epoch", 0, type=int, check=at_least(0), default_text="0 = off"),
    Option(("--max_time",), "control", "Wall-clock budget in seconds; stops cleanly with a "
           "final checkpoint", None, type=float, check=positive),
    Option(("--early_stopping",), "control", "Stop after PATIENCE validations without accuracy "
           "gain", 0, type=int, metavar="PATIENCE", check=at_least(0), default_text="0 = off"),
    # tracking
    Option(("--clearml",), "tracking", "ClearML tracking: auto = online when configured, else "
           "offline", "auto", type=str, choices=("auto", "online", "offline", "off")),
    Option(("--clearml_upload_model",), "tracking", "Register the best checkpoint as a ClearML "
           "output model", False, action="store_true"),
    Option(("--clearml_store_diff",), "tracking", "Store the git repository, commit and "
           "uncommitted diff of the working tree with the ClearML task (off: the task holds "
           "only the run's options and metrics, no code, no environment variables)", False,
           action="store_true"),
    Option(("--tensorboard",), "tracking", "Also log to TensorBoard in DIR", None, type=str,
           metavar="DIR"),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
DATA_DEPENDENT_DEFAULTS = {o.name: (o.default, o.builtin) for o in OPTIONS
                           if o.builtin is not MISSING}  # (--dataroot given, built-in data)
RUNTIME_OPTIONS = tuple(o.name for o in OPTIONS if o.group == "runtime")


def default_embedding_dim(architecture: str) -> int:
    """The embedding size ``architecture``'s papers and weights use (its registry entry): 512
    for the iResNets, 128 for the seed's ResNets and the paper's MobileFaceNet."""
    return SPECS[architecture].embedding_dim if architecture in SPECS else 128


def _embedding_text() -> str:
    sizes: dict[int, list[str]] = {}
    for name, facts in SPECS.items():
        if name != "tiny":
            sizes.setdefault(facts.embedding_dim, []).append(name)
    return "the --model's own: " + "; ".join(f"{dim} for {', '.join(names)}"
                                             for dim, names in sorted(sizes.items()))


def _help(option: Option, default: Any = MISSING) -> str:
    text = option.describe_default(default)
    if text == "MARGIN":
        text = _margin_text()
    elif text == "MODEL_EMBEDDING":
        text = _embedding_text()
    return f"{option.help} (default: {text})"


def add_options(parser: argparse.ArgumentParser | Any, names: Iterable[str],
                defaults: Mapping[str, Any] | None = None,
                helps: Mapping[str, str] | None = None) -> None:
    """Add the table's options ``names`` to ``parser`` (a parser or an argument group).

    ``defaults``: other defaults for this parser (stated in the help); ``helps``: other help
    texts (for a command where an option means something narrower)."""
    defaults, helps = defaults or {}, helps or {}
    for name in names:
        o = BY_NAME[name]
        default = defaults.get(name, MISSING)
        kwargs: dict[str, Any] = {"dest": name, "help": helps.get(name) or _help(o, default)}
        if o.action:
            kwargs["action"] = o.action
        else:
            kwargs.update(type=o.type, choices=o.choices, nargs=o.nargs, metavar=o.metavar)
        # data-dependent defaults stay None until resolve_defaults knows whether --dataroot is set
        kwargs["default"] = (default if default is not MISSING
                             else None if o.builtin is not MISSING else o.default)
        parser.add_argument(*o.flags, **{k: v for k, v in kwargs.items() if v is not None
                                         or k == "default"})


def add_runtime_args(parser: argparse.ArgumentParser, names: Sequence[str] = ("device",),
                     defaults: Mapping[str, Any] | None = None,
                     helps: Mapping[str, str] | None = None) -> None:
    """The runtime options every command shares (``--device`` by default, declared once in
    :data:`OPTIONS`), in a "runtime" group; arguments as :func:`add_options`."""
    add_options(parser.add_argument_group(GROUPS["runtime"]), names, defaults, helps)


def get_args_parser(description: str | None = None, **defaults: Any) -> argparse.ArgumentParser:
    """The training parser made from :data:`OPTIONS`; ``defaults`` are one experiment's own
    (e.g. ``model="resnet50"``): they replace the table's, in the help text too."""
    unknown = sorted(set(defaults) - set(BY_NAME))
    if unknown:
        raise TypeError(f"not training options: {', '.join(unknown)}")
    p = argparse.ArgumentParser(
        description=description or "Train a face-embedding model (each experiment file states "
        "its backbone and loss)")
    for group, title in GROUPS.items():
        g = p.add_argument_group(title)
        add_options(g, [o.name for o in OPTIONS if o.group == group], defaults)
    return p


def record_image_size(dataroot: str) -> int | None:
    """The square image size a RecordIO ``dataroot``'s ``property`` file states (112 for
    insightface's sets), or None (identity folder, no property, not square)."""
    from faceignite.data.record_index import read_property, record_files  # numpy, OpenCV

    files = record_files(dataroot)
    if files is None or files[2] is None:
        return None
    _, height, width = read_property(files[2])
    return height if height == width and height > 0 else None


def resolve_defaults(cfg: argparse.Namespace) -> argparse.Namespace:
    """Fill the data-dependent options left at ``None`` for real or built-in data."""
    builtin = cfg.dataroot is None
    if not builtin and getattr(cfg, "image_size", 0) is None:
        cfg.image_size = record_image_size(cfg.dataroot)  # None for an identity folder
    for name, (real, small) in DATA_DEPENDENT_DEFAULTS.items():
        if getattr(cfg, name, None) is None:
            setattr(cfg, name, small if builtin else real)
    if getattr(cfg, "embedding_dim", 0) is None:  # weight-compatible: the architecture's own
        cfg.embedding_dim = default_embedding_dim(getattr(cfg, "model", ""))
    if getattr(cfg, "model", None) and getattr(cfg, "normalize", None) is None \
            and "normalize" in vars(cfg):  # recorded in checkpoints: the convention trained with
        from faceignite.models.registry import SPECS
        cfg.normalize = SPECS[cfg.model].normalize if cfg.model in SPECS else None
    if "augment" in vars(cfg) and cfg.augment is None:
        cfg.augment = default_augment(cfg.dataroot)
    return cfg


def default_augment(dataroot: str | None) -> str:
    """``flip`` for five-point crops (a RecordIO set, or a folder the alignment tool marked as
    ``--template arcface``), ``box`` otherwise (box crops, the built-in data)."""
    if dataroot is None:
        return "box"
    from faceignite.data.crop_mark import read_template_mark
    from faceignite.data.record_index import record_files

    if record_files(dataroot) is not None or read_template_mark(dataroot) == "arcface":
        return "flip"
    return "box"


def check_option_ranges(cfg: argparse.Namespace | Mapping[str, Any]) -> None:
    """Raise a one-line :class:`FaceIgniteError` naming the first option out of its range."""
    values = vars(cfg) if isinstance(cfg, argparse.Namespace) else cfg
    for name, value in values.items():
        option = BY_NAME.get(name)
        if option is None or value is None:
            continue
        values_ = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values_):
            raise FaceIgniteError(f"{option.flags[0]} {_plain(value)}: must be a finite number")
        if option.check is None:
            continue
        problem = option.check(value)
        if problem:
            shown = _plain(value)
            raise FaceIgniteError(f"{option.flags[0]} {shown}: {problem}")


def config_file_of(argv: Sequence[str]) -> str | None:
    """The ``--config FILE`` of ``argv`` (None when not given)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=str, default=None)
    return pre.parse_known_args(list(argv))[0].config


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The options ``argv`` sets explicitly (not left at a default)."""
    quiet = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the same options, every default suppressed
        if action.option_strings and action.dest != "help":
            quiet._add_action(_copy_suppressed(action))
    return set(vars(quiet.parse_known_args(list(argv))[0]))


def _copy_suppressed(action: argparse.Action) -> argparse.Action:
    import copy

    action = copy.copy(action)
    action.default = argparse.SUPPRESS
    action.required = False
    return action


def parse_args(argv: Sequence[str] | None = None, description: str | None = None,
               **defaults: Any) -> argparse.Namespace:
    """Parse ``argv`` with :func:`get_args_parser`, fill the data-dependent defaults
    (:func:`resolve_defaults`) and check every range (:func:`check_option_ranges`).  ``--n_triplets``
    without ``--triplet_mining`` selects ``random``.

    ``--config FILE`` (:mod:`faceignite.config_file`): its values replace the experiment's
    ``defaults``; the flags of ``argv`` replace both.  ``--resume_path auto`` needs an explicit
    ``--output_dir`` (a flag, or ``output_dir``/``log_dir`` in the file)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser(description, **defaults)
    from_file: dict[str, Any] = {}
    path = config_file_of(argv)
    if path:
        from faceignite.config_file import read_options_file

        from_file = read_options_file(path, BY_NAME)
        parser.set_defaults(**from_file)
    cfg = resolve_defaults(parser.parse_args(argv))
    check_option_ranges(cfg)
    given = given_options(parser, argv) | set(from_file)
    if cfg.n_triplets and "triplet_mining" not in given:  # the second system's n_triplets
        cfg.triplet_mining = "random"
    if cfg.resume_path == "auto" and "output_dir" not in given:
        raise FaceIgniteError("--resume_path auto looks for the newest checkpoint under "
                              "--output_dir: give --output_dir explicitly (log_dir in a config "
                              "file)")
    return cfg


def _default_words(option: Option) -> str:
    text = option.describe_default()
    return _embedding_text() if text == "MODEL_EMBEDDING" else text


def defaults_table() -> str:
    """The README's table of the defaults that differ from the original ``train.py``'s."""
    rows = ["| option | original | faceignite | why |", "|---|---|---|---|"]
    for o in OPTIONS:
        if o.original is not None:
            rows.append(f"| `{o.flags[0]}` | {o.original} | {_default_words(o)} | {o.why} |")
    same = [o for o in OPTIONS if o.name in ("batch_size", "valid_split", "model", "image_size")]
    rows.append("| " + ", ".join(f"`{o.flags[0]}`" for o in same) + " | "
                + ", ".join(_plain(o.default) for o in same) + " | same | |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m faceignite.config: the README's defaults table
    print(defaults_table())
