"""What this host is, as far as a measurement depends on it: its CPU, and the model and driver of its GPUs.

Read on the host, before cells run: result reuse compares it (runner/reuse.py)
and the table's header names it. GPUs come from nvidia-smi; without one, a GPU
cell's hardware is "unknown", which never matches a recorded one.
"""

from __future__ import annotations

import csv
import io
import os
import re
from functools import cache

from runner.gpu_guard import nvidia_smi
from runner.shared import cpu_model


@cache
def cpu_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} logical cores"


@cache
def gpu_models() -> dict[int, dict[str, str]] | None:
    """nvidia-smi's index -> {name, driver}, or None where nvidia-smi is missing or fails."""
    answer = nvidia_smi("--query-gpu=index,name,driver_version")
    if answer is None:
        return None
    rows = [[f.strip() for f in row] for row in csv.reader(io.StringIO(answer)) if len(row) == 3]
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


def card_matches(card: str, gpu_name: str) -> bool:
    """Whether a GPU of this name is of the card kind (Ray's accelerator type spelling: "H100" is
    "NVIDIA H100 80GB HBM3", "RTX-PRO-6000" is "NVIDIA RTX PRO 6000 ..."; "H20" is not "NVIDIA H200")."""

    def words(text: str) -> str:
        return " ".join(re.split(r"[\s_-]+", text.upper()))

    return re.search(rf"(^| ){re.escape(words(card))}( |$)", words(gpu_name)) is not None


def card_problem(card: str, gpus: tuple[int, ...]) -> str | None:
    """Why a cell for this card kind cannot run on these GPUs of this machine; None when every one is of it."""
    known = gpu_models() or {}
    if not all(g in known for g in gpus):
        return f"the cell is for {card} cards; nvidia-smi lists no GPU {','.join(map(str, gpus))} here"
    wrong = [f"GPU {g} is {known[g]['name']}" for g in gpus if not card_matches(card, known[g]["name"])]
    return f"the cell is for {card} cards; here {', '.join(wrong)}" if wrong else None


def gpu_kind(hardware: str | None) -> str | None:
    """The kind of GPU in a hardware_of line ("GPUs: A + A; driver D" -> "A; driver D"); None for a CPU."""
    if not hardware or not hardware.startswith("GPUs: ") or "; driver " not in hardware:
        return None
    names, driver = hardware.removeprefix("GPUs: ").split("; driver ", 1)
    return f"{' + '.join(dict.fromkeys(names.split(' + ')))}; driver {driver}"  # the kind of card, once


def result_hardware(result: dict) -> str | None:
    """What a result ran on: as the runner recorded it (a GPU line as its kind of card), else from what the
    harness saw."""
    recorded = (result.get("measured_with") or {}).get("hardware")
    if recorded:
        return gpu_kind(recorded) or recorded
    env = result.get("environment") or {}
    names = " + ".join(dict.fromkeys(d["name"] for d in (result.get("memory") or {}).get("devices") or []))
    if names:
        return f"{names}; driver {env['driver']}" if env.get("driver") else names
    return f"CPU ({env['cpu_count']} cores)" if env.get("cpu_count") else None
