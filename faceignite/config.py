"""The one configuration path: an argparse parser shared by every experiment file.

Every option of the original ``train.py`` keeps its name; its defaults give way to a recipe that
trains well (see the README table "Defaults: original vs faceignite").  Experiment files call
:func:`get_args_parser` with their own defaults (e.g. ``model="resnet50"``) and parse ``argv``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Mapping, Sequence

from faceignite.models.registry import ARCHITECTURES  # the one list lives with the models
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential")


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


def default_num_workers() -> int:
    """Half the CPUs, at most 8, at least 0 (2-core laptops load in the main process)."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataroot", "-d", type=str, default=None,
                   help="Absolute path to the training folder, one sub-folder per identity "
                        "(default: a built-in generated dataset, for a quick try)")
    g.add_argument("--valid_split", type=float, default=None,
                   help="Fraction of each identity held out for validation "
                        "(default: 0.01; 0.2 for the built-in dataset)")
    g.add_argument("--image_size", type=int, default=None,
                   help="Input size in pixels: 224 (original), 160 or 112 "
                        "(default: 224 for --dataroot, 64 for the built-in dataset)")
    g.add_argument("--batch_size", type=int, default=None,
                   help="Batch size of all processes together (default: 64; 32 for the built-in dataset)")
    g.add_argument("--num_workers", type=int, default=default_num_workers(),
                   help="Number of workers for data loaders (default: half the CPUs, max 8)")
    g.add_argument("--index_cache", type=str, default=None,
                   help="File caching the image index of --dataroot "
                        "(default: <output_dir>/index-<hash>.json)")


def _add_model_args(p: argparse.ArgumentParser, model: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", type=str, default=model, choices=ARCHITECTURES,
                   help=f"The required model architecture for training: {ARCHITECTURES} "
                        f"(default: {model!r})")
    g.add_argument("--embedding_dim", type=int, default=128,
                   help="Dimension of the embedding vector (default: 128)")
    g.add_argument("--pretrained", type=str, default=None,
                   help="ImageNet weights for the backbone: a local .pth file, or 'download' "
                        "for torchvision's weights (default: none, random initialisation)")


def _add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (original defaults in the README)")
    g.add_argument("--epochs", type=int, default=None,
                   help="Required training epochs (default: 30; 8 for the built-in dataset)")
    g.add_argument("--optimizer", type=str, default="sgd", choices=("sgd", "adam", "adagrad"),
                   help="Optimizer of the model (default: sgd; the original used adam)")
    g.add_argument("--lr", type=float, default=0.1,
                   help="Peak learning rate of the model (default: 0.1 with sgd)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight_decay", type=float, default=5e-4,
                   help="Weight decay of the model, never of the centres (default: 5e-4)")
    g.add_argument("--lr_scheduler", type=str, default="multistep",
                   choices=("multistep", "step", "cosine", "none"),
                   help="LR schedule after warm-up (default: multistep)")
    g.add_argument("--warmup_epochs", type=float, default=1.0,
                   help="Linear LR warm-up length in epochs (default: 1)")
    g.add_argument("--lr_milestones", type=float, nargs="+", default=[0.5, 0.75, 0.9],
                   help="multistep: epochs (or fractions of --epochs when < 1) where the LR "
                        "is multiplied by --lr_gamma (default: 0.5 0.75 0.9)")
    g.add_argument("--lr_step", type=int, default=10, help="step: epochs per LR step (default: 10)")
    g.add_argument("--lr_gamma", type=float, default=0.1, help="LR decay factor (default: 0.1)")
    g.add_argument("--center_loss_lr", type=float, default=0.5,
                   help="Learning rate of the centres, own SGD optimizer (default: 0.5)")
    g.add_argument("--center_loss_weight", type=float, default=0.01,
                   help="Center loss weight lambda (default: 0.01; the original used 0.003)")
    g.add_argument("--label_smoothing", type=float, default=0.0,
                   help="Label smoothing of the cross-entropy term (default: 0)")


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("losses (triplet, ArcFace, CosFace experiments)")
    g.add_argument("--margin", type=float, default=None,
                   help="Margin of the loss: triplet on L2 distance (default 0.2; the second "
                        "seed used 0.5), ArcFace angle in radians (0.5), CosFace cosine (0.35)")
    g.add_argument("--scale", type=float, default=64.0,
                   help="ArcFace/CosFace logit scale s (default: 64)")
    g.add_argument("--triplet_mining", type=str, default="semi_hard",
                   choices=("batch_hard", "semi_hard"),
                   help="Online triplet mining inside each batch (default: semi_hard)")
    g.add_argument("--identities_per_batch", type=int, default=None, metavar="P",
                   help="P x K batches: identities per batch "
                        "(default: --batch_size / --images_per_identity)")
    g.add_argument("--images_per_identity", type=int, default=None, metavar="K",
                   help="P x K batches: images per identity; setting it turns P x K batches on "
                        "(default: off, plain shuffled batches; 4 in the triplet experiment)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0, help="Random seed (default: 0)")
    g.add_argument("--device", type=str, default="auto",
                   help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    g.add_argument("--amp", type=str, default="off", choices=("off", "bf16", "fp16"),
                   help="Automatic mixed precision on CUDA (default: off)")
    g.add_argument("--channels_last", action="store_true", help="Use channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--output_dir", type=str, default="runs",
                   help="Folder for checkpoints, logs, ROC plots (default: ./runs/<experiment>-<time>)")
    g.add_argument("--backend", type=str, default="auto", choices=("auto", "nccl", "gloo", "none"),
                   help="Distributed backend: auto = nccl on GPUs (gloo on CPU) when started by "
                        "torchrun or with --nproc_per_node > 1, else one plain process; give "
                        "nccl/gloo explicitly under SLURM srun (default: auto)")
    g.add_argument("--nproc_per_node", type=int, default=1,
                   help="Spawn this many training processes on this machine (Ignite's "
                        "idist.Parallel), e.g. one per GPU; not with torchrun (default: 1)")
    g.add_argument("--sync_bn", action="store_true",
                   help="Several processes: SyncBatchNorm, batch statistics over all of them")


def add_lfw_args(p: argparse.ArgumentParser) -> None:
    """The LFW validation options (training and ``faceignite.evaluate`` share them)."""
    g = p.add_argument_group("LFW validation")
    g.add_argument("--lfw", type=str, default=None,
                   help="Absolute path to the labeled faces in the wild dataset folder "
                        "(default: the built-in pairs set when --dataroot is not given)")
    g.add_argument("--lfw_pairs", type=str, default=None,
                   help="Pairs file (default: pairs.txt or lfw_pairs.txt inside --lfw)")
    g.add_argument("--lfw_batch_size", type=int, default=128,
                   help="Batch size for LFW dataset (default: 128; the original used 12)")
    g.add_argument("--lfw_validation_epoch_interval", type=int, default=1,
                   help="Perform LFW validation every n epoch interval (default: every epoch)")
    g.add_argument("--lfw_skip_missing", action="store_true",
                   help="Skip pairs whose images are missing (logged) instead of failing")
    g.add_argument("--lfw_flip", action="store_true",
                   help="Horizontal-flip test-time augmentation (embedding + mirror)")
    g.add_argument("--distance", type=str, default="l2", choices=("l2", "cosine"),
                   help="Distance between L2-normalised embeddings (default: l2)")


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints")
    g.add_argument("--resume_path", type=str, default=None,
                   help="path to latest model checkpoint (default: None)")
    g.add_argument("--finetune", action="store_true",
                   help="With --resume_path: load the backbone only (other classes/embedding size)")
    g.add_argument("--n_saved", type=int, default=3, help="Checkpoints kept (default: 3)")


def _add_control_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long runs")
    g.add_argument("--log_interval", type=int, default=50,
                   help="Iterations between log lines and tracked scalars (default: 50)")
    g.add_argument("--val_interval", type=int, default=0,
                   help="Iterations between held-out/LFW validations, besides the epoch "
                        "interval (default: 0 = epochs only)")
    g.add_argument("--save_interval", type=int, default=0,
                   help="Iterations between checkpoints, besides every epoch (default: 0 = off)")
    g.add_argument("--max_time", type=float, default=None,
                   help="Wall-clock budget in seconds; stops cleanly with a final checkpoint")
    g.add_argument("--early_stopping", type=int, default=0, metavar="PATIENCE",
                   help="Stop after PATIENCE validations without accuracy gain (default: off)")


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking")
    g.add_argument("--clearml", type=str, default="auto", choices=("auto", "online", "offline", "off"),
                   help="ClearML tracking: auto = online when configured, else offline (default: auto)")
    g.add_argument("--clearml_upload_model", action="store_true",
                   help="Register the best checkpoint as a ClearML output model")
    g.add_argument("--tensorboard", type=str, default=None, metavar="DIR",
                   help="Also log to TensorBoard in DIR")


def get_args_parser(model: str = "resnet34", description: str | None = None,
                    **defaults: Any) -> argparse.ArgumentParser:
    """Build the shared parser; ``defaults`` override option defaults for one experiment."""
    p = argparse.ArgumentParser(
        description=description or "Training FaceNet facial recognition model using center loss",
    )
    _add_data_args(p)
    _add_model_args(p, model)
    _add_optim_args(p)
    _add_loss_args(p)
    _add_runtime_args(p)
    add_lfw_args(p)
    _add_checkpoint_args(p)
    _add_control_args(p)
    _add_tracking_args(p)
    if defaults:
        p.set_defaults(**defaults)
    return p


# Defaults that depend on the data: (real data given with --dataroot, built-in dataset).
DATA_DEPENDENT_DEFAULTS = {
    "epochs": (30, 8),
    "batch_size": (64, 32),
    "image_size": (224, 64),
    "valid_split": (0.01, 0.2),
}


def resolve_defaults(cfg: argparse.Namespace) -> argparse.Namespace:
    """Fill options left at ``None`` with the default for real or built-in data."""
    builtin = cfg.dataroot is None
    for name, (real, small) in DATA_DEPENDENT_DEFAULTS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, small if builtin else real)
    return cfg


def parse_args(argv: Sequence[str] | None = None, **kwargs: Any) -> argparse.Namespace:
    """Parse ``argv`` with :func:`get_args_parser` (kwargs as there), then :func:`resolve_defaults`."""
    return resolve_defaults(get_args_parser(**kwargs).parse_args(argv))
