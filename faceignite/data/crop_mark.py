"""The mark an alignment run leaves in its output folder: which crop it wrote.

``DST/alignment.txt`` holds one line, ``<template> <image_size>`` (e.g. ``arcface 112``), so
training can choose the augmentation that keeps five-point crops on their template
(``--augment flip``) without being told.
"""
from __future__ import annotations

import os

MARK_FILE = "alignment.txt"


def write_template_mark(folder: str, template: str, image_size: int) -> None:
    """Record that ``folder`` holds ``template`` crops of ``image_size`` pixels."""
    with open(os.path.join(folder, MARK_FILE), "w", encoding="utf-8") as f:
        f.write(f"{template} {int(image_size)}\n")


def read_template_mark(folder: str) -> str | None:
    """The template named by ``folder``'s mark (``arcface`` / ``box``), or None."""
    try:
        with open(os.path.join(folder, MARK_FILE), encoding="utf-8") as f:
            words = f.read().split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0] if words else None
