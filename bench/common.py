"""Shared bench helpers: fair interleaved timing, markdown tables with ratios, test images.

Every bench measures its baseline and its candidates in the same process, alternating them
round by round (ABC, CBA, ABC, …), and reports each candidate's ratio to the baseline as the
median of the per-round ratios: on a shared machine, load drifts hit both sides of a ratio alike.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
SHARED_DATA = Path(os.environ.get("FACEIGNITE_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Result:
    """Throughputs (items/s) of one candidate, one per round, and its per-round ratios."""

    name: str
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], int], sync: Callable[[], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Run ``fn`` (which returns how many items it processed) and return items per second.

    ``clock=time.process_time`` counts this process's CPU seconds (user + system) instead of
    wall seconds: on a machine shared with other jobs it measures the work, not the waiting.
    """
    if sync:
        sync()
    start = clock()
    items = fn()
    if sync:
        sync()
    return items / max(clock() - start, 1e-12)


def interleaved(candidates: Mapping[str, Callable[[], int]], rounds: int = 3, warmup: int = 1,
                sync: Callable[[], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> list[Result]:
    """Time every candidate ``rounds`` times, alternating the order each round.

    The first candidate is the baseline; each result's ``ratios`` holds, per round, its rate
    divided by the baseline's rate in that same round.  ``warmup`` untimed rounds run first.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    results = {name: Result(name) for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        rates = {name: timed(candidates[name], sync, clock) for name in order}
        for name in names:
            results[name].rates.append(rates[name])
            base = rates[names[0]]
            results[name].ratios.append(rates[name] / base if base else float("nan"))
    return [results[name] for name in names]


def fmt(value: float, digits: int | None = None) -> str:
    """A number for a table: thousands separators, ``-`` for NaN; ``digits`` decimals, by
    default one below 100 and none above."""
    if value != value:  # NaN
        return "-"
    if digits is None:
        digits = 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table under a ``### title`` line."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rate_table(title: str, results: Sequence[Result], unit: str = "images/s",
               extra_columns: Sequence[str] = ()) -> str:
    """The standard table: candidate, median rate, min–max over rounds, ratio to the baseline."""
    header = ["", f"{unit} (median)", "min – max", f"ratio vs {results[0].name}", *extra_columns]
    rows = []
    for res in results:
        spread = f"{fmt(min(res.rates))} – {fmt(max(res.rates))}" if res.rates else "-"
        ratio = f"{res.ratio:.2f}x" if res.ratio == res.ratio else "-"
        rows.append([res.name, fmt(res.median), spread, ratio,
                     *(res.extra.get(c, "") for c in extra_columns)])
    return table(title, header, rows)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the machine and the library versions a reader needs to compare."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{time.strftime('%Y-%m-%d')} | {os.cpu_count()}-core {platform.machine()} "
            f"{cpu_model()} | {gpu} | torch {torch.__version__} | "
            f"python {platform.python_version()}")


def print_header(name: str, args: argparse.Namespace) -> None:
    """The bench's name, the machine, and the exact options of this run."""
    def value(v) -> str:
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    opts = " ".join(f"--{k}" if v is True else f"--{k} {value(v)}"
                    for k, v in vars(args).items() if v is not None and v is not False)
    print(f"## {name}\n\n{machine_line()}\n\n`python bench/{name}.py {opts}`\n", flush=True)


def face_like_jpeg(rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB ``size``² image with a photo's mix of smooth shading, edges and sensor noise."""
    import cv2

    low = rng.uniform(40, 220, (6, 6, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    c = size // 2
    skin = rng.uniform(80, 230, 3).tolist()
    cv2.ellipse(img, (c + int(rng.integers(-8, 8)), c), (int(size * 0.3), int(size * 0.4)), 0, 0,
                360, skin, -1)
    for dx in (-1, 1):
        cv2.circle(img, (c + dx * size // 7, c - size // 12), max(2, size // 30),
                   rng.uniform(0, 90, 3).tolist(), -1)
    cv2.line(img, (c - size // 8, c + size // 5), (c + size // 8, c + size // 5),
             rng.uniform(60, 200, 3).tolist(), max(1, size // 60))
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg_tree(root: str, identities: int, images_each: int, size: int = 250,
                    seed: int = 0, quality: int = 90) -> list[str]:
    """Write ``identities`` folders of ``images_each`` face-like JPEGs; return the file paths."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(identities):
        folder = os.path.join(root, f"id{i:05d}")
        os.makedirs(folder, exist_ok=True)
        for j in range(images_each):
            path = os.path.join(folder, f"{j:04d}.jpg")
            cv2.imwrite(path, face_like_jpeg(rng, size), [cv2.IMWRITE_JPEG_QUALITY, quality])
            paths.append(path)
    return paths


def add_rounds_arg(p: argparse.ArgumentParser, rounds: int = 3) -> None:
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"Timed rounds per candidate, alternating order (default: {rounds})")


def add_clock_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                   help="wall: elapsed seconds (default); cpu: this process's CPU seconds, "
                        "steadier on a machine shared with other jobs (single-process runs only)")


def unit(clock: str) -> str:
    return "images/s" if clock == "wall" else "images/CPU-s"


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: 0 = torch's default, one per core); on a "
                        "machine shared with other jobs, 1 avoids OpenMP threads waiting on a "
                        "busy core")


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
