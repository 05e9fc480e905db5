"""Console scripts (``faceignite-evaluate``, …): each runs the ``main`` of its
``python -m faceignite.X`` command and exits 0 when it returns (its errors exit 2 themselves).

A command's ``main`` returns its result to Python callers (a path, metrics); a console script
must return an exit code, which is all these wrappers add.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # console script -> the module whose main() it runs
    "faceignite-align": "faceignite.align.cli",
    "faceignite-embed": "faceignite.embed",
    "faceignite-evaluate": "faceignite.evaluate",
    "faceignite-export": "faceignite.export",
    "faceignite-ijb": "faceignite.ijb.cli",
    "faceignite-make-pairs": "faceignite.lfw.make_pairs",
    "faceignite-onnx-export": "faceignite.onnx_export",
    "faceignite-pack": "faceignite.data.pack",
    "faceignite-verify": "faceignite.verify",
}


def run(module: str) -> int:
    """Run ``module.main()`` on ``sys.argv[1:]``; 0 unless it returned an int exit code."""
    result = importlib.import_module(module).main(sys.argv[1:])
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def align() -> int:
    return run(COMMANDS["faceignite-align"])


def embed() -> int:
    return run(COMMANDS["faceignite-embed"])


def evaluate() -> int:
    return run(COMMANDS["faceignite-evaluate"])


def export() -> int:
    return run(COMMANDS["faceignite-export"])


def ijb() -> int:
    return run(COMMANDS["faceignite-ijb"])


def make_pairs() -> int:
    return run(COMMANDS["faceignite-make-pairs"])


def onnx_export() -> int:
    return run(COMMANDS["faceignite-onnx-export"])


def pack() -> int:
    return run(COMMANDS["faceignite-pack"])


def verify() -> int:
    return run(COMMANDS["faceignite-verify"])


def config() -> int:
    """``faceignite-config``: print the options table (``python -m faceignite.config``)."""
    from faceignite.config import defaults_table

    print(defaults_table())
    return 0
