"""``--resume_path auto``: the newest complete training checkpoint under ``--output_dir``.

    path = newest_complete_checkpoint("runs")     # runs/<run>/training_checkpoint_<it>.pt, or None
    path = agreed_resume_path("runs")             # the same, decided by rank 0 for every process

Checkpoints are looked for in ``output_dir`` itself and in its run folders (one level down;
given an experiment ``name``, only its own ``<name>-<time>`` folders: the second system's
center and triplet trainers shared one ``log_dir``), newest first (file time, then iteration).  A newest file that cannot be read (cut short by a full
disk or a killed copy, corrupt) is skipped with a warning and the one before it is used.  With
several processes rank 0 decides and the others follow (``ignite.distributed.broadcast``), so
that all resume the same file.

torchrun ``--max_restarts N`` restarts a failed worker group with the same command line: with
``--resume_path auto`` the restarted group continues from the newest complete checkpoint (at most
``--save_interval`` iterations are trained again), and the resume line of ``run.log`` names the
restart (:func:`elastic_restart`).  The same holds for a SLURM requeue after pre-emption.
"""
from __future__ import annotations

import glob
import logging
import os

from faceignite.checkpoint.files import LATEST_RE, load_checkpoint
from faceignite.errors import FaceIgniteError
from faceignite.runtime import rank0_decides

logger = logging.getLogger("faceignite")

AUTO = "auto"


def elastic_restart() -> str:
    """``"torchrun restart R of N"`` in a worker group that torchrun's elastic agent restarted
    (``TORCHELASTIC_RESTART_COUNT`` > 0), else ``""``."""
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if not count.isdigit() or int(count) == 0:
        return ""
    return f"torchrun restart {count} of {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}"


def candidate_checkpoints(output_dir: str, name: str | None = None) -> list[str]:
    """Every ``training_checkpoint_<iteration>.pt`` in ``output_dir`` and its run folders (of
    experiment ``name`` only, when given), newest first (modification time, then iteration)."""
    root = os.path.abspath(os.path.expanduser(output_dir))
    runs = glob.escape(name) + "-*" if name else "*"
    found = []
    for path in (glob.glob(os.path.join(glob.escape(root), "*.pt"))
                 + glob.glob(os.path.join(glob.escape(root), runs, "*.pt"))):
        match = LATEST_RE.match(os.path.basename(path))
        if match and os.path.isfile(path):
            try:
                found.append((os.path.getmtime(path), int(match.group(1)), path))
            except OSError:  # removed meanwhile (n_saved rotation)
                continue
    return [path for _, _, path in sorted(found, reverse=True)]


def newest_complete_checkpoint(output_dir: str, name: str | None = None) -> str | None:
    """The newest checkpoint under ``output_dir`` (in experiment ``name``'s run folders) that
    reads back whole, or None when there is none (a fresh run); unreadable ones are skipped with
    one warning each."""
    for path in candidate_checkpoints(output_dir, name):
        try:
            load_checkpoint(path)
        except FaceIgniteError as exc:
            logger.warning("--resume_path auto: skipping %s (%s)", path, exc)
            continue
        return path
    return None


def agreed_resume_path(output_dir: str, name: str | None = None) -> str | None:
    """:func:`newest_complete_checkpoint`, decided by rank 0 and followed by every process."""
    return rank0_decides(lambda: newest_complete_checkpoint(output_dir, name) or "") or None


def resolve_auto_resume(resume_path: str | None, finetune: bool, output_dir: str,
                        name: str | None = None) -> str | None:
    """``--resume_path``: ``resume_path`` itself, or for ``auto`` the agreed checkpoint of
    experiment ``name`` under ``output_dir`` (:func:`agreed_resume_path`), or None (a new
    run)."""
    if resume_path != AUTO:
        return resume_path
    if finetune:
        raise FaceIgniteError("--resume_path auto continues a run; --finetune needs a checkpoint "
                              "file")
    path = agreed_resume_path(output_dir, name)
    if path is None:
        restart = elastic_restart()
        if restart:  # the first group died before its first checkpoint: all of it again
            logger.warning("--resume_path auto (%s): no checkpoint under %s yet, starting again "
                           "from iteration 0", restart, output_dir)
        else:
            logger.info("--resume_path auto: no checkpoint under %s, starting a new run",
                        output_dir)
    return path
