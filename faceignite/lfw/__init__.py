"""The former name of :mod:`faceignite.verification`, kept as a thin alias so that code and
commands written against it keep working: ``from faceignite.lfw import X`` and
``import faceignite.lfw.evaluator`` give the verification package's objects, and
``python -m faceignite.lfw.make_pairs`` runs ``faceignite.verification.make_pairs``."""
import importlib
import sys

from faceignite.verification import *  # noqa: F401,F403
from faceignite.verification import __all__  # noqa: F401

for _name in ("bin_set", "bin_writer", "evaluator", "metrics", "pairs", "roc", "targets"):
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = importlib.import_module(
        f"faceignite.verification.{_name}")
