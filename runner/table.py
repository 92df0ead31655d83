"""The comparison table: the seed's columns, relative to the baseline cell, failed rows kept.

Software | Settings | Avg Tok/s | Max Mem (MiB) | Speed X | Max mem % | Notes,
plus a details table (spread, time to first token, decode rate, load time,
allocator peak). Written as markdown, CSV and JSON into the run's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runner.engines import ENGINES
from runner.shared import write_text_atomic

COLUMNS = ["Software", "Settings", "Avg Tok/s", "Max Mem (MiB)", "Speed X", "Max mem %", "Notes"]


def _stat(result: dict[str, Any], name: str, field: str = "median") -> float | None:
    value = result.get("metrics", {}).get(name)
    return value.get(field) if isinstance(value, dict) else None


def _memory(result: dict[str, Any]) -> float | None:
    memory = result.get("memory") or {}
    return memory.get("peak_mib") if result.get("status") == "ok" else None


def _notes(result: dict[str, Any]) -> str:
    status = result.get("status", "failed")
    if status != "ok":
        reason = result.get("reason") or "no reason recorded"
        return reason if reason.startswith(f"{status}:") else f"{status}: {reason}"
    notes = []
    gpus = result["cell"].get("gpus") or []
    if len(gpus) > 1:  # the seed said "4090+3090" here
        notes.append(f"{len(gpus)} GPUs: " + "+".join(str(g) for g in gpus))
    elif gpus and gpus[0] != 0:  # tells apart the same cell on another card
        notes.append(f"GPU {gpus[0]}")
    batch = (result.get("workload") or {}).get("batch_size") or 1
    total = _stat(result, "total_tokens_per_s")
    if batch > 1 and total:  # Avg Tok/s is per request, as the seed's batch-1 figures are
        notes.append(f"batch {batch}: {total:.2f} tok/s in total")
    memory = result.get("memory") or {}
    if memory.get("kind") == "process-tree-peak-rss":
        notes.append("CPU: memory is the peak RSS of the cell's processes")
    elif memory.get("kind") == "process-peak-rss":  # results written before worker processes were counted
        notes.append("CPU: memory is process peak RSS")
    notes.extend(_engine_notes(result))
    notes.extend(w for w in result.get("warnings", []) if w.startswith(("UserWarning", "log: ")))
    return "; ".join(notes)[:400]


def _engine_notes(result: dict[str, Any]) -> list[str]:
    """What an engine's own benchmark tool measured (every engine's ``reference`` block) and what its
    description adds (runner.engines: notes)."""
    notes = []
    reference = result.get("reference") or {}
    if reference.get("decode_tokens_per_s"):
        notes.append(
            f"{reference['tool']} decode {reference['decode_tokens_per_s']:.2f} tok/s "
            f"(this row's decode = {reference.get('decode_ratio', float('nan')):.2f}x)"
        )
    elif reference.get("error"):
        notes.append(f"{reference.get('tool', 'reference')} failed: {reference['error']}"[:160])
    engine = ENGINES.get(result["cell"].get("engine"))
    if engine:
        notes.extend(engine.notes(result))
    return notes


def rows(results: list[dict[str, Any]], baseline_id: str) -> pd.DataFrame:
    """One row per result with numeric columns; Speed X and Max mem % against the baseline."""
    base = next((r for r in results if r["cell"]["id"] == baseline_id), None)
    base_tps = _stat(base, "tokens_per_s") if base and base.get("status") == "ok" else None
    base_mem = _memory(base) if base else None
    records = []
    for r in results:
        ok = r.get("status") == "ok"
        tps, mem = (_stat(r, "tokens_per_s"), _memory(r)) if ok else (None, None)
        records.append(
            {
                "Software": r["cell"]["software"],
                "Settings": r["cell"]["label"],
                "Avg Tok/s": tps,
                "Tok/s min": _stat(r, "tokens_per_s", "min") if ok else None,
                "Tok/s max": _stat(r, "tokens_per_s", "max") if ok else None,
                "Max Mem (MiB)": mem,
                "Speed X": tps / base_tps if tps and base_tps else None,
                "Max mem %": 100 * mem / base_mem if mem and base_mem else None,
                "TTFT (ms)": 1000 * _stat(r, "ttft_s") if _stat(r, "ttft_s") else None,
                "Decode tok/s": _stat(r, "decode_tokens_per_s"),
                "Load (s)": r.get("metrics", {}).get("load_s"),
                "Prepare (s)": r.get("metrics", {}).get("prepare_s"),
                "Reference decode tok/s": (r.get("reference") or {}).get("decode_tokens_per_s"),
                "Engine version": (r.get("environment") or {}).get("engine_version"),
                "Allocator peak (MiB)": ((r.get("metrics", {}).get("allocator") or {}).get("max_reserved_mib")),
                "Status": r.get("status"),
                "Notes": _notes(r),
                "Cell": r["cell"]["id"],
                "Baseline": r["cell"]["id"] == baseline_id,
            }
        )
    return pd.DataFrame.from_records(records)


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def display_frame(frame: pd.DataFrame, settings_joiner: str) -> pd.DataFrame:
    """The seed's columns as text: spread beside Avg Tok/s, settings joined for the medium."""
    shown = pd.DataFrame()
    shown["Software"] = frame["Software"]
    shown["Settings"] = [
        settings_joiner.join(s) + (" (baseline)" if b else "")
        for s, b in zip(frame["Settings"], frame["Baseline"], strict=False)
    ]
    shown["Avg Tok/s"] = [
        f"{_fmt(t, 2)} ({_fmt(lo, 2)}–{_fmt(hi, 2)})" if t is not None and not pd.isna(t) else ""
        for t, lo, hi in zip(frame["Avg Tok/s"], frame["Tok/s min"], frame["Tok/s max"], strict=False)
    ]
    shown["Max Mem (MiB)"] = [_fmt(v, 0) for v in frame["Max Mem (MiB)"]]
    shown["Speed X"] = [_fmt(v, 2) for v in frame["Speed X"]]
    shown["Max mem %"] = [_fmt(v, 0) for v in frame["Max mem %"]]
    shown["Notes"] = frame["Notes"]
    return shown


def details_frame(frame: pd.DataFrame, settings_joiner: str) -> pd.DataFrame:
    shown = pd.DataFrame()
    shown["Software"] = frame["Software"]
    shown["Settings"] = [settings_joiner.join(s) for s in frame["Settings"]]
    shown["TTFT (ms)"] = [_fmt(v, 1) for v in frame["TTFT (ms)"]]
    shown["Decode tok/s"] = [_fmt(v, 2) for v in frame["Decode tok/s"]]
    shown["Load (s)"] = [_fmt(v, 1) for v in frame["Load (s)"]]
    shown["Prepare (s)"] = [_fmt(v, 1) for v in frame["Prepare (s)"]]
    shown["Reference decode tok/s"] = [_fmt(v, 2) for v in frame["Reference decode tok/s"]]
    shown["Engine version"] = [v or "" for v in frame["Engine version"]]
    shown["Allocator peak (MiB)"] = [_fmt(v, 0) for v in frame["Allocator peak (MiB)"]]
    shown["Status"] = frame["Status"]
    shown["Cell"] = frame["Cell"]
    return shown


def caption(results: list[dict[str, Any]]) -> list[str]:
    """What the numbers were measured on, said once above the table."""
    first = next((r for r in results if r.get("status") == "ok"), results[0] if results else None)
    if first is None:
        return []
    model, workload = first.get("model", {}), first.get("workload", {})
    weights = "SYNTHETIC random weights, real architecture and tokenizer" if model.get("synthetic") else "real weights"
    lines = [
        f"Model: {model.get('name')} (from {model.get('source')}; {weights})",
        (
            f"Workload: {workload.get('prompt_tokens')} prompt tokens, exactly {workload.get('new_tokens')} new tokens "
            f"(greedy, EOS ignored), batch {workload.get('batch_size')}, {workload.get('warmup')} warm-up, "
            f"{workload.get('repetitions')} timed repetitions"
        ),
    ]
    env = first.get("environment", {})
    devices = (first.get("memory") or {}).get("devices") or []
    if env:
        hardware = ", ".join(sorted({d["name"] for d in devices})) or f"CPU ({env.get('cpu_count')} cores)"
        versions = [f"{k} {env[k]}" for k in ("driver", "torch") if env.get(k)]
        engines = {}
        for r in results:
            version = (r.get("environment") or {}).get("engine_version")
            if version:
                engines.setdefault(r["cell"]["software"], version)
        versions += [f"{software} {version}" for software, version in engines.items()]
        lines.append(f"Hardware: {hardware}" + (f"; {', '.join(versions)}" if versions else ""))
    lines.append(
        "Avg Tok/s: new tokens / generation time, median of repetitions (min–max). "
        "Max Mem: peak device memory in use (NVML, as nvidia-smi shows it), summed over the cell's GPUs; "
        "on CPU, the peak RSS of the cell's processes (engine workers included)."
    )
    return lines


def relative_columns_line(results: list[dict[str, Any]], baseline_id: str) -> str | None:
    """Why Speed X and Max mem % are empty, when the baseline gave no number to divide by."""
    base = next((r for r in results if r["cell"]["id"] == baseline_id), None)
    if base is None:
        return (
            f"Speed X and Max mem % are empty: the baseline cell {baseline_id} has no result here; "
            f"run it too (--only {baseline_id}) to fill them."
        )
    if base.get("status") != "ok":
        label = " / ".join(base["cell"].get("label") or []) or baseline_id
        return (
            f"Speed X and Max mem % are empty: the baseline ({base['cell'].get('software')} {label}) "
            f"{base.get('status', 'failed')}; see its row."
        )
    return None


def render(results: list[dict[str, Any]], baseline_id: str, folder: Path) -> str:
    """Write table.md, table.csv and table.json into folder; return the text to print."""
    from tabulate import tabulate

    frame = rows(results, baseline_id)
    head = caption(results)
    if results and (line := relative_columns_line(results, baseline_id)):
        head.append(line)
    markdown = "\n".join(
        [
            *(f"{line}  " for line in head),
            "",
            tabulate(
                display_frame(frame, "<br>"), headers="keys", tablefmt="pipe", showindex=False, disable_numparse=True
            ),
            "",
            "Details:",
            "",
            tabulate(
                details_frame(frame, "<br>"), headers="keys", tablefmt="pipe", showindex=False, disable_numparse=True
            ),
            "",
        ]
    )
    write_text_atomic(folder / "table.md", markdown)
    csv_frame = frame.assign(Settings=[" / ".join(s) for s in frame["Settings"]])
    write_text_atomic(folder / "table.csv", csv_frame.to_csv(index=False))
    write_text_atomic(folder / "table.json", csv_frame.to_json(orient="records", indent=2))
    printed = tabulate(
        display_frame(frame, "; "), headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )
    return "\n".join([*head, "", printed])
