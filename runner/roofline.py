"""The roofline column: a GPU row's decode rate as a share of what its GPUs' memory bandwidth allows.

At batch 1 every decode step reads all the weights once, so a GPU can decode at
most bandwidth / weight bytes steps per second. A row's share is its decode
tok/s per sequence times the bytes its engine reads per step (the engine
description's weights_bytes: each engine's own weight files, or a checkpoint's dtype) over
the bandwidth of its GPUs. The KV cache read per step (under 1 % of a 7B
model's weights at the seed's 320-token context) is left out, so the share is
a slight underestimate for long contexts. Cells split over several GPUs count
each GPU's bandwidth (tensor parallel reads in parallel; a pipeline-parallel
row at batch 1 uses one stage at a time, so its share reads low).

The bandwidth is measured, not assumed: the first GPU cell of a kind of GPU in
a run folder runs entrypoints/bandwidth.py (a device copy) before its model
loads, and the runner keeps the figure, with the card's nominal one, in the
folder's bandwidth.json by hardware. CPU rows and rows without a figure stay
empty.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from runner.engines import ENGINES
from runner.host import gpu_kind, result_hardware
from runner.shared import write_json_atomic

BANDWIDTH_FILE = "bandwidth.json"
_LOCK = threading.Lock()


def hardware_key(result: dict[str, Any]) -> str | None:
    """The kind of GPU a result ran on (runner.host.result_hardware); None for a CPU cell."""
    return result_hardware(result) if result["cell"].get("gpus") else None


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """hardware -> the bandwidth record measured on it, for this run folder."""
    try:
        found = json.loads((folder / BANDWIDTH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def needs_probe(folder: Path, gpus: tuple[int, ...], hardware: str | None) -> bool:
    """Whether a cell on gpus (hardware: runner.host.hardware_of's line) should measure their bandwidth."""
    kind = gpu_kind(hardware)
    return bool(gpus) and kind is not None and "devices" not in load(folder).get(kind, {})


def keep(folder: Path, result: dict[str, Any]) -> None:
    """Store a cell's bandwidth measurement under its hardware (a failed probe is kept too: it says why)."""
    measured, hardware = result.get("bandwidth"), hardware_key(result)
    if not measured or not hardware:
        return
    with _LOCK:
        records = load(folder)
        if "devices" in records.get(hardware, {}) and "devices" not in measured:
            return  # a good figure is not replaced by a failed probe
        records[hardware] = {**measured, "cell": result["cell"]["id"], "at": result.get("started_at")}
        write_json_atomic(folder / BANDWIDTH_FILE, records)


def device_gb_s(record: dict[str, Any] | None) -> float | None:
    devices = (record or {}).get("devices") or []
    rates = [d["copy_gb_s"] for d in devices if d.get("copy_gb_s")]
    return min(rates) if rates else None  # one kind of GPU per hardware key; the slowest if they differ


def share_pct(result: dict[str, Any], bandwidths: dict[str, dict[str, Any]]) -> float | None:
    """The row's decode rate over the rate its GPUs' bandwidth allows for its weights, in percent."""
    gpus = result["cell"].get("gpus") or []
    if result.get("status") != "ok" or not gpus:
        return None
    rate = ((result.get("metrics") or {}).get("decode_tokens_per_s") or {}).get("median")
    gb_s = device_gb_s(bandwidths.get(hardware_key(result) or ""))
    if not rate or not gb_s:
        return None
    engine = ENGINES.get(result["cell"]["engine"])
    weights = engine.weights_bytes(result) if engine else None
    if not weights:
        return None
    # decode_tokens_per_s is per sequence (entrypoints/harness.py): decode steps per second, each reading the
    # weights once for the whole batch
    return 100.0 * rate * weights / (gb_s * 1e9 * len(gpus))


def caption_line(bandwidths: dict[str, dict[str, Any]]) -> str | None:
    """What the roofline column was computed against, for the table's header."""
    parts = []
    for hardware, record in bandwidths.items():
        gb_s = device_gb_s(record)
        if gb_s is None:
            parts.append(f"{hardware}: not measured ({record.get('error', 'no figure')})")
            continue
        names = sorted({d["name"] for d in record["devices"]})
        nominal = {d.get("nominal_gb_s") for d in record["devices"]} - {None}
        said = f", nominal {min(nominal):,} GB/s" if nominal else ""
        parts.append(f"{' + '.join(names)}: {gb_s:,.0f} GB/s measured by a device copy{said}")
    if not parts:
        return None
    return "Roofline % (details): decode tok/s x weight bytes read per step / the GPUs' memory bandwidth; " + "; ".join(
        parts
    )
