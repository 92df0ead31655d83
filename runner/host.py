"""What this host is, as far as a measurement depends on it: its CPU, and the model and driver of its GPUs.

Read on the host, before cells run: result reuse compares it (runner/reuse.py)
and the table's header names it. GPUs come from nvidia-smi; without one, a GPU
cell's hardware is "unknown", which never matches a recorded one.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import shutil
import subprocess
from functools import cache


@cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores"


@cache
def gpu_models() -> dict[int, dict[str, str]] | None:
    """nvidia-smi's index -> {name, driver}, or None where nvidia-smi is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    rows = [[f.strip() for f in row] for row in csv.reader(io.StringIO(done.stdout)) if len(row) == 3]
    return {int(index): {"name": name, "driver": driver} for index, name, driver in rows}


def hardware_of(gpus: tuple[int, ...]) -> str:
    """What a cell on these GPUs (none: the CPU) runs on, in one comparable line."""
    if not gpus:
        return f"CPU: {cpu_description()}"
    known = gpu_models() or {}
    if not all(g in known for g in gpus):
        return "GPUs: unknown (nvidia-smi did not list them)"
    names = " + ".join(known[g]["name"] for g in gpus)
    drivers = sorted({known[g]["driver"] for g in gpus})
    return f"GPUs: {names}; driver {', '.join(drivers)}"
