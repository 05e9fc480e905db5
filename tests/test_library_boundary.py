"""The options stop at the composition (issue 27, item 4): during a real training run and its
resume, no function of the library (``faceignite/``) receives the argparse namespace, its live
``vars()`` dict, or another object that holds all the options.  Library functions take plain
arguments, small typed option groups (``DataOptions``, ``LossOptions``, ``ResumeOptions``) and
the :class:`~faceignite.runtime.Runtime`.

Watched with ``sys.setprofile``: every call of a Python function defined under ``faceignite/``
has its arguments inspected (one level into lists, tuples, dicts and plain objects).  The
modules that turn a command line into a run are the composition's side of the boundary:
``faceignite.config``, ``faceignite.config_file`` and ``faceignite.cli`` parse the options,
``faceignite.run`` starts the run from them (run folder, ``config.json``, the processes).
One record is allowed: the JSON-plain copy of the options that a checkpoint stores under its
``config`` key (``TrainingState(config=...)``, ``TrainingState.config``, a loaded checkpoint's
``ckpt["config"]``): data written to and read from the file, never the live namespace nor its
dict.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from pathlib import Path

import faceignite
from conftest import copy_subset
from faceignite.config import get_args_parser
from handlers.training import main

LIBRARY = str(Path(faceignite.__file__).resolve().parent)
COMPOSITION_SIDE = {"faceignite.config", "faceignite.config_file", "faceignite.cli"}
RECORDS = {("faceignite.checkpoint.state", "__init__", "config"),  # a checkpoint's options copy
           ("faceignite.run", "commit", "config"),  # config.json's copy (plain_config)
           ("faceignite.run", "write", "config"), ("faceignite.run", "write_config", "options")}
RECORD_KEY = "config"  # where a checkpoint (and TrainingState) keeps that copy
OPTION_NAMES = frozenset(vars(get_args_parser().parse_args([])))


def _holds_all_options(names) -> bool:
    """More than half of the option names: a god object, not a small option group."""
    return len(OPTION_NAMES.intersection(names)) > len(OPTION_NAMES) // 2


class BoundaryWatch:
    """A profile function that records each library call receiving all the options."""

    def __init__(self):
        self.library_code: dict = {}  # code object -> its module when it is watched, else None
        # id(vars(ns)) of every namespace seen -> that dict, kept alive so that its id is never
        # reused by another dict (which would then look like the namespace's own)
        self.live_dicts: dict[int, dict] = {}
        self.found: list[str] = []
        self.calls = 0

    def _watched(self, frame) -> str | None:
        code = frame.f_code
        if code not in self.library_code:
            module = frame.f_globals.get("__name__", "")
            inside = (code.co_filename.startswith(LIBRARY) and module.startswith("faceignite")
                      and module not in COMPOSITION_SIDE)
            self.library_code[code] = module if inside else None
        return self.library_code[code]

    def _problem(self, value, record: bool) -> str | None:
        if isinstance(value, argparse.Namespace):
            self.live_dicts[id(vars(value))] = vars(value)
            return "the argparse namespace"
        if isinstance(value, dict):
            if id(value) in self.live_dicts:
                return "the namespace's own vars() dict"
            keys = [k for k in value if isinstance(k, str)]
            if _holds_all_options(keys) and not record:
                return f"a dict of {len(OPTION_NAMES.intersection(keys))} options"
            return None
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = [f.name for f in dataclasses.fields(value)]
            if _holds_all_options(names):
                return f"a {type(value).__name__} of all the options"
        return None

    def _inspect(self, value, record: bool) -> str | None:
        problem = self._problem(value, record)
        if problem:
            return problem
        if isinstance(value, (list, tuple)):
            items = [(None, item) for item in list(value)[:64]]
        elif isinstance(value, dict):
            items = list(value.items())[:64]
        elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
            try:
                items = list(vars(value).items())
            except TypeError:
                return None
        else:
            return None
        for key, item in items:
            problem = self._problem(item, record or key == RECORD_KEY)
            if problem:
                return f"{problem} inside a {type(value).__name__}"
        return None

    def __call__(self, frame, event, _arg):
        if event != "call":
            return
        module = frame.f_code.co_filename.startswith(LIBRARY) and self._watched(frame)
        if not module:
            for value in frame.f_locals.values():  # the composition's namespace, to know its dict
                if isinstance(value, argparse.Namespace):
                    self.live_dicts[id(vars(value))] = vars(value)
            return
        self.calls += 1
        code = frame.f_code
        count = code.co_argcount + code.co_kwonlyargcount
        count += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)  # *args, **kwargs
        local = frame.f_locals
        for name in code.co_varnames[:count]:
            if name not in local:
                continue
            record = (module, code.co_name, name) in RECORDS
            problem = self._inspect(local[name], record)
            if problem:
                self.found.append(f"{module}.{code.co_qualname}({name}=...) received {problem}")

    def __enter__(self):
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def test_the_library_never_receives_the_options(synthetic_root, small_pairs, tmp_path):
    """A training run (held-out validation, verification on the built-in pairs, a checkpoint)
    and its resume pass only plain arguments, option groups and the Runtime below the
    composition."""
    root = copy_subset(synthetic_root[0], tmp_path / "faces", identities=4, images=6)
    pairs = small_pairs
    out = tmp_path / "runs"
    common = ["--dataroot", str(root), "--output_dir", str(out), "--model", "tiny",
              "--image_size", "32", "--batch_size", "4", "--valid_split", "0.25",
              "--num_workers", "0", "--clearml", "off", "--device", "cpu",
              "--lfw", str(pairs), "--lfw_batch_size", "64", "--log_interval", "2"]
    watch = BoundaryWatch()
    with watch:
        first = main(common + ["--epochs", "1"], handle_signals=False)
        run_dir = next(out.glob("resnet34_center-*"))
        second = main(common + ["--epochs", "2", "--resume_path", str(run_dir)],
                      handle_signals=False)
    assert "val_accuracy" in first and "lfw_accuracy" in second  # both validations ran
    assert watch.calls > 1000  # the watch saw the library at work
    assert not watch.found, "\n".join(sorted(set(watch.found)))


def test_the_watch_sees_the_options_passed_in_any_form():
    """The watch itself: a namespace, its live ``vars()`` (even as a small dict), a dict of all
    the options and an object holding the namespace are each found; plain values are not."""
    from faceignite.runtime import resolve_gpus

    options = get_args_parser().parse_args(["--device", "cpu"])
    holder = type("Holder", (), {})()
    holder.cfg = options
    watch = BoundaryWatch()
    with watch:
        resolve_gpus("0", options.device)         # plain values: fine
        resolve_gpus(options, "cpu")              # the namespace
        resolve_gpus(vars(options), "cpu")        # its live dict
        resolve_gpus(dict(vars(options)), "cpu")  # a dict of all the options
        resolve_gpus(holder, "cpu")               # an object that carries it
    found = "\n".join(watch.found)
    assert len(watch.found) == 4, found
    assert "the argparse namespace" in watch.found[0]
    assert "vars() dict" in watch.found[1] and "a dict of" in watch.found[2]
    assert "inside a Holder" in watch.found[3]
