"""Console scripts (``faceignite-evaluate``, …): each runs the ``main`` of its
``python -m faceignite.X`` command and exits 0 when it returns (its errors exit 2 themselves).

A command's ``main`` returns its result to Python callers (a path, metrics); a console script
must return an exit code, which is all these wrappers add.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable

COMMANDS = {  # console script -> the module whose main() it runs
    "faceignite-align": "faceignite.align.cli",
    "faceignite-embed": "faceignite.embed",
    "faceignite-evaluate": "faceignite.evaluate",
    "faceignite-export": "faceignite.export",
    "faceignite-ijb": "faceignite.ijb.cli",
    "faceignite-make-pairs": "faceignite.verification.make_pairs",
    "faceignite-onnx-export": "faceignite.onnx_export",
    "faceignite-pack": "faceignite.data.pack",
    "faceignite-verify": "faceignite.verify",
}


def run(module: str) -> int:
    """Run ``module.main()`` on ``sys.argv[1:]``; 0 unless it returned an int exit code."""
    result = importlib.import_module(module).main(sys.argv[1:])
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _entry(script: str) -> Callable[[], int]:
    """The console-script function of ``script`` (a key of :data:`COMMANDS`)."""
    def entry() -> int:
        return run(COMMANDS[script])

    entry.__name__ = entry.__qualname__ = script.removeprefix("faceignite-").replace("-", "_")
    return entry


align, embed, evaluate, export, ijb, make_pairs, onnx_export, pack, verify = (
    _entry(script) for script in COMMANDS)


def config() -> int:
    """``faceignite-config``: print the options table (``python -m faceignite.config``)."""
    from faceignite.config import defaults_table

    print(defaults_table())
    return 0
