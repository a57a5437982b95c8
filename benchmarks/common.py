"""Shared benchmark plumbing: paired timing, medians, the table and the JSON record.

Stock and fastworker are timed alternately inside each repeat, in one process, so
that machine noise hits both alike; only medians and their ratio are reported.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Callable

#: A case builds its input outside the timed region and returns the timed callable.
Setup = Callable[[], Callable[[], object]]


@dataclass
class Row:
    """One benchmark case: per-operation times for each implementation."""

    group: str
    case: str
    n: int
    unit: str
    stock: list[float] = field(default_factory=list)
    fastworker: list[float] = field(default_factory=list)

    @property
    def stock_median(self) -> float:
        return statistics.median(self.stock)

    @property
    def fast_median(self) -> float:
        return statistics.median(self.fastworker)

    @property
    def speedup(self) -> float:
        """How many times faster fastworker is than stock (medians)."""
        return self.stock_median / self.fast_median


def time_once(setup: Setup, n: int, gc_enabled: bool = False) -> float:
    """Seconds per operation for one run of ``n`` operations.

    The garbage collector is off unless ``gc_enabled``. A run that returns a float
    reports its own elapsed seconds (e.g. only the time spent in the code under
    test); otherwise the whole call is timed.
    """
    run = setup()
    gc.collect()
    if not gc_enabled:
        gc.disable()
    try:
        start = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    if isinstance(result, float):
        elapsed = result
    return elapsed / n


def measure(
    group: str,
    case: str,
    n: int,
    stock: Setup,
    fast: Setup,
    repeats: int,
    unit: str = "ns",
    progress: bool = True,
    gc_enabled: bool = False,
) -> Row:
    """Time both implementations ``repeats`` times, alternating which goes first."""
    scale = {"ns": 1e9, "us": 1e6}[unit]
    row = Row(group, case, n, unit)
    live = progress and sys.stderr.isatty()  # a redrawn line on a terminal
    for i in range(repeats):
        order = ((stock, row.stock), (fast, row.fastworker))
        for setup, out in order if i % 2 == 0 else reversed(order):
            out.append(time_once(setup, n, gc_enabled) * scale)
        if live:
            print(f"\r  {group}: {case} (n={n:,}) repeat {i + 1}/{repeats}", end="", file=sys.stderr, flush=True)
    if live:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    elif progress:
        print(f"  done: {group}: {case} (n={n:,}, {repeats} repeats)", file=sys.stderr, flush=True)
    return row


def format_table(rows: list[Row]) -> str:
    """A plain-text table: one line per case, medians and the speedup."""
    header = ("benchmark", "case", "n", "stock", "fastworker", "speedup")
    lines = [
        (
            r.group,
            r.case,
            f"{r.n:,}",
            f"{r.stock_median:,.1f} {r.unit}",
            f"{r.fast_median:,.1f} {r.unit}",
            f"{r.speedup:,.1f}x",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _git_commit() -> str | None:
    """The checked-out commit of this repository (with ``-dirty`` for local changes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    """Versions and machine, stored with the raw numbers."""
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - distributed depends on psutil
        ram = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "os": _os_name(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "ram_gib": ram,
        "distributed": version("distributed"),
        "dask": version("dask"),
        "fastworker": version("fastworker"),
        "numpy": version("numpy"),
        "git_commit": _git_commit(),
    }


def row_record(r: Row) -> dict:
    """A Row as stored in results.json: raw repeats, medians and speedup."""
    return {**asdict(r), "stock_median": r.stock_median, "fastworker_median": r.fast_median,
            "speedup": r.speedup}


def write_json(path: str, rows: list[Row], repeats: int) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    record = {
        "environment": environment(),
        "repeats": repeats,
        "rows": [row_record(r) for r in rows],
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
