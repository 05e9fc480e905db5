"""Training checkpoints: what one holds, how to read one safely, and how a run resumes from it.

A checkpoint is one ``torch.save`` file of tensors and plain containers, so it loads with
``torch.load(..., weights_only=True)``: loading never runs code from the file.  Its top-level keys
are the original trainer's (``epoch``, ``num_classes``, ``embedding_dimension``,
``batch_size_training``, ``model_state_dict``, ``model_architecture``,
``optimizer_model_state_dict``, ``optimizer_centerloss_state_dict``,
``learning_rate_scheduler_state_dict``) plus what an exact resume needs: ``criterion_state_dict``
(classifier and centres), ``scaler_state_dict``, ``trainer_state_dict``, ``sampler_state_dict``
(the training sampler's seed, epoch and position; older files without it resume from the
trainer's iteration), ``rng_state``, ``split``, ``image_size``, ``metrics``, ``lfw_threshold``
and ``config``.

:class:`TrainingState` is the ``state_dict``/``load_state_dict`` object Ignite's ``Checkpoint``
saves; :class:`Resume` is what an experiment calls for ``--resume_path`` / ``--finetune``.
"""
from faceignite.checkpoint.files import (BEST_PREFIX, BEST_RE, FORMAT, WHICH, best_checkpoint, FORMAT_VERSION, LATEST_PREFIX,
                                         LATEST_RE, NAME, ORIGINAL_KEYS, RESUME_KEYS,
                                         TRAJECTORY_OPTIONS, check_compatible, check_checkpoint_options,
                                         latest_checkpoint, load_checkpoint,
                                         resolve_checkpoint_path, safe_load)
from faceignite.checkpoint.resume import Resume, ResumeOptions, load_backbone
from faceignite.checkpoint.state import (RNGState, TrainingState, dataset_split, num_classes_of,
                                         unwrap)
from faceignite.config import plain_config

__all__ = [
    "BEST_PREFIX", "BEST_RE", "WHICH", "best_checkpoint", "FORMAT", "FORMAT_VERSION", "LATEST_PREFIX", "LATEST_RE", "NAME",
    "ORIGINAL_KEYS", "RESUME_KEYS", "RNGState", "Resume", "ResumeOptions", "TRAJECTORY_OPTIONS",
    "TrainingState",
    "check_compatible", "check_checkpoint_options", "dataset_split", "latest_checkpoint",
    "load_backbone", "load_checkpoint", "num_classes_of", "plain_config", "resolve_checkpoint_path",
    "safe_load", "unwrap",
]
