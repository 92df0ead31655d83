"""When an earlier ok result may stand in for a cell: only if everything that defines its measurement holds.

The cell id already hashes the engine, settings, GPUs, model spec and workload.
Beside it a result records what else it was measured with (``measured_with``):
the checkpoint's fingerprint (a model changed in place), the result schema, the
executor, the engine's environment (the image tag, or the local interpreter with
its installed packages and the entrypoint files) and the hardware (GPU models
and driver, or the CPU) and, for a CPU cell, the CPU set it was pinned to. A
result is reused only when all of these are equal; otherwise the cell is
measured again, and the runner says which one changed.
"""

from __future__ import annotations

from typing import Any

from runner.cpuset import named
from runner.shared import RESULT_SCHEMA_VERSION

WHAT_CHANGED = {
    "model_fingerprint": "the checkpoint changed",
    "result_schema": "the result schema changed",
    "executor": "another executor",
    "engine_environment": "the engine's image or environment changed",
    "hardware": "other hardware or driver",
    "cpus": "another CPU set",
    "loadgen": "another load generator",  # serving cells: AIPerf's executable or image (offline cells: none)
}


def measured_with(
    model: dict[str, Any], executor_name: str, environment: str, hardware: str, cpus: str | None = None
) -> dict[str, Any]:
    """What a cell's measurement depends on beyond its id; cpus: a CPU cell's CPU set (None for GPU cells)."""
    return {
        "model_fingerprint": model.get("fingerprint"),
        "result_schema": RESULT_SCHEMA_VERSION,
        "executor": executor_name,
        "engine_environment": environment,
        "hardware": hardware,
        "cpus": cpus,
    }


def why_not_reuse(previous: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """None when previous may be kept for a cell measured with wanted; else why it is measured again."""
    if previous is None:
        return "no earlier result"
    if previous.get("status") != "ok":
        return f"the earlier result was {previous.get('status', 'not ok')}"
    recorded = previous.get("measured_with")
    if not isinstance(recorded, dict):
        return "the earlier result does not record what it was measured with (an older runner wrote it)"
    changed = [WHAT_CHANGED[key] for key in WHAT_CHANGED if recorded.get(key) != wanted.get(key)]
    if WHAT_CHANGED["cpus"] in changed:  # say which: a CPU row depends on how many CPUs it had
        then = named(recorded["cpus"]) if recorded.get("cpus") else "none recorded"
        changed[changed.index(WHAT_CHANGED["cpus"])] += f" ({named(wanted.get('cpus') or '')} now, {then} then)"
    return "; ".join(changed) or None
