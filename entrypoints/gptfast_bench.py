"""gpt-fast's own benchmark, its generate.py, on a cell's checkpoint and settings, and its figures beside the cell's.

generate.py (run through gptfast_tool.py, so its ModelArgs lookup finds the checkpoint) loads
the same weights file, compiles ``decode_one_token`` with mode "reduce-overhead" (``--compile``),
runs one untimed generation to compile, then ``--num_samples`` timed ones of ``--max_new_tokens``
tokens after a synthetic prompt of the cell's length (``--prompt N``: N random ids; speed does not
depend on which), and prints per sample "Time for inference i: ... tokens/sec" and "Bandwidth
achieved: ... GB/s" (model bytes x tok/s), then "Average tokens/sec". Its tok/s counts the prefill,
as the cell's Avg Tok/s does. ``--top_k 1`` makes its sampling greedy, as the cell's.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

TOOL = "gpt-fast generate.py"
PATTERNS = {
    "samples_tokens_per_s": re.compile(r"^Time for inference \d+: [\d.]+ sec total, ([\d.]+) tokens/sec", re.M),
    "samples_bandwidth_gb_s": re.compile(r"^Bandwidth achieved: ([\d.]+) GB/s", re.M),
    "tokens_per_s": re.compile(r"^Average tokens/sec: ([\d.]+)", re.M),
    "compile_s": re.compile(r"^Compilation time: ([\d.]+) seconds", re.M),
    "load_s": re.compile(r"^Time to load model: ([\d.]+) seconds", re.M),
    "memory_gb": re.compile(r"^Memory used: ([\d.]+) GB", re.M),
}
SINGLE = ("tokens_per_s", "compile_s", "load_s", "memory_gb")


def arguments(
    checkpoint: Path, settings: dict[str, Any], workload: dict[str, Any], device: str, sampling: dict[str, Any]
) -> list[str]:
    """generate.py's arguments with the cell's settings spelled out."""
    line = [
        "--checkpoint_path",
        str(checkpoint),
        "--prompt",
        str(workload["prompt_tokens"]),
        "--max_new_tokens",
        str(workload["new_tokens"]),
        "--num_samples",
        str(max(workload["repetitions"], 1)),
        "--batch_size",
        str(workload["batch_size"]),
        "--top_k",
        str(sampling["top_k"]),
        "--temperature",
        str(sampling["temperature"]),
        "--device",
        device,
    ]
    if settings["compile"]:
        line.append("--compile")
    if settings["compile_prefill"]:
        line.append("--compile_prefill")
    return line


def parse(output: str) -> dict[str, Any]:
    """The figures generate.py printed (missing ones absent)."""
    found: dict[str, Any] = {}
    for name, pattern in PATTERNS.items():
        values = [float(v) for v in pattern.findall(output)]
        if values:
            found[name] = values[-1] if name in SINGLE else values
    if found.get("samples_bandwidth_gb_s"):
        found["bandwidth_gb_s"] = statistics.fmean(found["samples_bandwidth_gb_s"])
    return found


def summarise(output: str, command: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    """generate.py's figures beside this cell's (ratio = this row's median tok/s / generate.py's average)."""
    found = parse(output)
    if "tokens_per_s" not in found:
        last = (output.strip().splitlines() or [""])[-1]
        return {"tool": TOOL, "command": command, "error": f"no 'Average tokens/sec' line: {last}"}
    summary: dict[str, Any] = {"tool": TOOL, "command": command, **found}
    ours = (metrics.get("tokens_per_s") or {}).get("median")
    if ours:
        summary["ratio"] = ours / found["tokens_per_s"]
    return summary
