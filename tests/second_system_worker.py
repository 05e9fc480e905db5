"""A process of ``test_second_system``'s two-process ``--resume_path auto`` check, in a module
of its own so that the spawned processes import little."""
from pathlib import Path

import ignite.distributed as idist

from faceignite.checkpoint.auto import agreed_resume_path


def agreed_worker(local_rank: int, folders: list[str], out: str) -> None:
    """Each process looks in another folder (``folders[rank]``): rank 0's answer must win."""
    rank = idist.get_rank()
    Path(out, f"rank{rank}.txt").write_text(str(agreed_resume_path(folders[rank], "auto")))
