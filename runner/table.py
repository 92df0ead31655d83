"""The comparison table: the seed's columns, relative to the baseline cell, failed rows kept.

Software | Settings | Avg Tok/s | Max Mem (MiB) | Speed X | Max mem % | Notes,
plus a details table (spread, time to first token, decode rate, load time,
allocator peak). Written as markdown, CSV and JSON into the run's folder, with
charts (runner/report/charts.py) linked from the markdown and table.html
(runner/report/html.py) beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runner import roofline
from runner.cpu_load import BUSY_SHARE
from runner.cpuset import format_cpus, named
from runner.engines import ENGINES
from runner.host import result_hardware
from runner.provenance import describe
from runner.report.charts import drawn, markdown_links, offline_charts
from runner.report.html import write_html
from runner.results import STATUS_WORDS
from runner.shared import write_text_atomic

RSS_KINDS = ("process-tree-peak-rss", "process-peak-rss")  # CPU cells: host memory, marked "RSS" in the column
COLUMNS = ["Software", "Settings", "Avg Tok/s", "Max Mem (MiB)", "Speed X", "Max mem %", "Notes"]


def _stat(result: dict[str, Any], name: str, field: str = "median") -> float | None:
    value = result.get("metrics", {}).get(name)
    return value.get(field) if isinstance(value, dict) else None


UNSTABLE_PCT = 10.0  # a row whose repetitions vary more than this (coefficient of variation) is flagged
WARNING_CHARS = 120  # a warning in Notes is cut here: its first words say what it is; the full text is in the JSON


def _spread_pct(result: dict[str, Any]) -> float | None:
    """The coefficient of variation of the row's tok/s over its repetitions, in %, as llama-bench's ±."""
    value = result.get("metrics", {}).get("tokens_per_s")
    if not isinstance(value, dict) or not value.get("mean") or value.get("stdev") is None:
        return None
    return 100 * value["stdev"] / value["mean"]


def _memory(result: dict[str, Any]) -> float | None:
    memory = result.get("memory") or {}
    return memory.get("peak_mib") if result.get("status") == "ok" else None


def _notes(result: dict[str, Any]) -> str:
    status = result.get("status", "failed")
    if status != "ok":
        reason = result.get("reason") or "no reason recorded"
        word = STATUS_WORDS.get(status, status)
        return reason if reason.startswith(f"{word}:") else f"{word}: {reason}"
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
    if memory.get("kind") == "unmeasured":
        notes.append(f"memory not measured: {memory.get('reason')}")
    elif memory.get("kind") == "process-tree-peak-rss":
        notes.append("CPU: memory is the peak RSS of the cell's processes")
    elif memory.get("kind") == "process-peak-rss":  # results written before worker processes were counted
        notes.append("CPU: memory is process peak RSS")
    busy = result.get("host_cpu_busy_before")
    if busy is not None and busy > BUSY_SHARE:
        notes.append(f"host CPU {100 * busy:.0f}% busy just before this cell")
    spread = _spread_pct(result)
    if spread is not None and spread > UNSTABLE_PCT:
        notes.append(f"unstable: tok/s varies ±{spread:.1f}% between repetitions (CV over {UNSTABLE_PCT:.0f}%)")
    notes.extend(_engine_notes(result))
    notes.extend(_one_line(w) for w in result.get("warnings", []) if w.startswith(("UserWarning", "log: ")))
    return "; ".join(notes)[:400]


def _one_line(warning: str, limit: int = WARNING_CHARS) -> str:
    """A warning as one table line: its whitespace (Python's multi-line warning texts) collapsed, cut at limit."""
    text = " ".join(warning.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _engine_notes(result: dict[str, Any]) -> list[str]:
    """What an engine's own benchmark tool measured (every engine's ``reference`` block) and what its
    description adds (runner.engines: notes)."""
    notes = []
    reference = result.get("reference") or {}
    if reference.get("decode_tokens_per_s"):
        depth = f" from depth {reference['decode_depth']}" if reference.get("decode_depth") else ""
        notes.append(
            f"{reference['tool']} decode {reference['decode_tokens_per_s']:.2f} tok/s{depth} "
            f"(this row's decode = {reference.get('decode_ratio', float('nan')):.2f}x)"
        )
    elif reference.get("error"):
        notes.append(f"{reference.get('tool', 'reference')} failed: {reference['error']}"[:160])
    engine = ENGINES.get(result["cell"].get("engine"))
    if engine:
        notes.extend(engine.notes(result))
    return notes


def rows(
    results: list[dict[str, Any]], baseline_id: str, bandwidths: dict[str, dict[str, Any]] | None = None
) -> pd.DataFrame:
    """One row per result with numeric columns; Speed X and Max mem % against the baseline; the roofline
    share where the run measured its GPUs' bandwidth (runner.roofline)."""
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
                "Spread (CV %)": _spread_pct(r) if ok else None,
                "Repetitions": len((r.get("metrics", {}).get("tokens_per_s") or {}).get("values") or []) or None,
                "Max Mem (MiB)": mem,
                "Memory kind": (r.get("memory") or {}).get("kind"),
                "Speed X": tps / base_tps if tps and base_tps else None,
                "Max mem %": 100 * mem / base_mem if mem and base_mem else None,
                "TTFT (ms)": 1000 * _stat(r, "ttft_s") if _stat(r, "ttft_s") else None,
                "Decode tok/s": _stat(r, "decode_tokens_per_s"),
                "Load (s)": r.get("metrics", {}).get("load_s"),
                "Prepare (s)": r.get("metrics", {}).get("prepare_s"),
                "Reference decode tok/s": (r.get("reference") or {}).get("decode_tokens_per_s"),
                "Roofline %": roofline.share_pct(r, bandwidths or {}),
                "Engine version": (r.get("environment") or {}).get("engine_version"),
                "torch": (r.get("environment") or {}).get("torch"),
                "Executor": r.get("executor"),
                "CPU threads": cpu_threads(r) if ok else None,
                "Allocator peak (MiB)": ((r.get("metrics", {}).get("allocator") or {}).get("max_reserved_mib")),
                "Status": r.get("status"),
                "Notes": _notes(r),
                "Cell": r["cell"]["id"],
                "Baseline": r["cell"]["id"] == baseline_id,
            }
        )
    return pd.DataFrame.from_records(records)


def _text(value: Any) -> str:
    """A text cell: empty for a missing value (never "nan" or "None")."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


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
    shown["Max Mem (MiB)"] = [
        f"{_fmt(v, 0)} RSS" if kind in RSS_KINDS and _fmt(v, 0) else _fmt(v, 0)
        for v, kind in zip(frame["Max Mem (MiB)"], frame["Memory kind"], strict=True)
    ]
    shown["Speed X"] = [_fmt(v, 2) for v in frame["Speed X"]]
    shown["Max mem %"] = [_fmt(v, 0) for v in frame["Max mem %"]]
    shown["Notes"] = frame["Notes"]
    return shown


def details_frame(frame: pd.DataFrame, settings_joiner: str) -> pd.DataFrame:
    shown = pd.DataFrame()
    shown["Software"] = frame["Software"]
    shown["Settings"] = [settings_joiner.join(s) for s in frame["Settings"]]
    shown["Spread (CV %)"] = [_fmt(v, 1) for v in frame["Spread (CV %)"]]
    shown["Repetitions"] = [_fmt(v, 0) for v in frame["Repetitions"]]
    shown["TTFT (ms)"] = [_fmt(v, 1) for v in frame["TTFT (ms)"]]
    shown["Decode tok/s"] = [_fmt(v, 2) for v in frame["Decode tok/s"]]
    shown["Load (s)"] = [_fmt(v, 1) for v in frame["Load (s)"]]
    shown["Prepare (s)"] = [_fmt(v, 1) for v in frame["Prepare (s)"]]
    shown["Reference decode tok/s"] = [_fmt(v, 2) for v in frame["Reference decode tok/s"]]
    if frame["Roofline %"].notna().any():  # only where the run measured its GPUs' bandwidth
        shown["Roofline %"] = [_fmt(v, 0) for v in frame["Roofline %"]]
    for column in ("Engine version", "torch", "Executor"):
        shown[column] = [_text(v) for v in frame[column]]
    if frame["CPU threads"].notna().any():  # only where the table has CPU rows
        shown["CPU threads"] = [_text(v) for v in frame["CPU threads"]]
    shown["Allocator peak (MiB)"] = [_fmt(v, 0) for v in frame["Allocator peak (MiB)"]]
    shown["Status"] = frame["Status"]
    shown["Cell"] = frame["Cell"]
    return shown


def caption(results: list[dict[str, Any]]) -> list[str]:
    """What the numbers were measured on, by what and when, said once above the table.

    Anything that is not the same for every row (a version, the executor) is said to differ and
    shown per row in the details table."""
    first = next((r for r in results if r.get("status") == "ok"), results[0] if results else None)
    if first is None:
        return []
    model, workload = first.get("model", {}), first.get("workload", {})
    weights = "SYNTHETIC random weights, real architecture and tokenizer" if model.get("synthetic") else "real weights"
    return [
        f"Model: {model.get('name')} (from {model.get('source')}; {weights})",
        (
            f"Workload: {workload.get('prompt_tokens')} prompt tokens, exactly {workload.get('new_tokens')} new tokens "
            f"(greedy, EOS ignored), batch {workload.get('batch_size')}, {workload.get('warmup')} warm-up, "
            f"{_repetitions(workload)}"
        ),
        _when_and_by(results),
        "Hardware: "
        + "; ".join(_one_or_differs("hardware", [result_hardware(r) for r in results]) + _cpu_cells(results)),
        "Software: " + ", ".join(_versions(results)),
        "Avg Tok/s: new tokens / generation time, median of repetitions (min–max). "
        "Max Mem: peak device memory in use (NVML, as nvidia-smi shows it), summed over the cell's GPUs; "
        "on CPU (marked RSS), the peak RSS of the cell's processes (engine workers included).",
    ]


def _repetitions(workload: dict[str, Any]) -> str:
    if workload.get("max_repetitions"):
        return (
            f"{workload.get('repetitions')} to {workload['max_repetitions']} timed repetitions "
            f"(more while tok/s varied by over {workload.get('target_cv_pct'):g}%)"
        )
    return f"{workload.get('repetitions')} timed repetitions"


def _when_and_by(results: list[dict[str, Any]]) -> str:
    times = sorted(r["finished_at"] for r in results if r.get("finished_at"))
    when = f"{times[0][:16].replace('T', ' ')} to {times[-1][:16].replace('T', ' ')}" if times else "unknown dates"
    runners = sorted({describe(r.get("runner")) for r in results})
    by = runners[0] if len(runners) == 1 else "several runners: " + "; ".join(runners)
    return f"Measured: {when}, by {by}"


def cpu_threads(result: dict[str, Any]) -> str | None:
    """A CPU row's threads and the CPUs it was pinned to ("2 threads on CPUs 0-1"); None for a GPU row or a
    result that records neither. The count is the engine's (runner.engines: compute_threads)."""
    if result["cell"].get("gpus"):
        return None
    recorded = result.get("threads") or {}
    where = format_cpus(recorded["cpus"]) if recorded.get("cpus") else (result.get("measured_with") or {}).get("cpus")
    engine = ENGINES.get(result["cell"].get("engine"))
    count = engine.compute_threads(result) if engine else recorded.get("compute")
    if where is None and count is None:
        return None
    threads = f"{count} thread{'' if count == 1 else 's'}" if count else "threads not reported"
    return f"{threads} on {named(where)}" if where else threads


def _cpu_cells(results: list[dict[str, Any]]) -> list[str]:
    """The threads and CPUs of the ok CPU rows: once when they agree, else each with its software."""
    by_phrase: dict[str, list[str]] = {}
    for r in results:
        phrase = cpu_threads(r) if r.get("status") == "ok" else None
        if phrase:
            by_phrase.setdefault(phrase, [])
            if r["cell"]["software"] not in by_phrase[phrase]:
                by_phrase[phrase].append(r["cell"]["software"])
    if len(by_phrase) <= 1:
        return [f"CPU cells: {phrase}" for phrase in by_phrase]
    return ["CPU cells: " + "; ".join(f"{phrase} ({', '.join(sw)})" for phrase, sw in by_phrase.items())]


def _one_or_differs(what: str, values: list[str | None]) -> list[str]:
    found = list(dict.fromkeys(v for v in values if v))
    if len(found) > 1:
        return [f"{what} differs by row: " + " | ".join(found)]
    return found or [f"{what} not recorded"]


def _versions(results: list[dict[str, Any]]) -> list[str]:
    """torch, each engine's release and the executor: one value, or 'differs by row (Details)'."""
    shown = []
    per_key = {
        "torch": [(r.get("environment") or {}).get("torch") for r in results],
        "executor": [r.get("executor") for r in results],
    }
    for software in dict.fromkeys(r["cell"]["software"] for r in results):
        per_key[software] = [
            (r.get("environment") or {}).get("engine_version") for r in results if r["cell"]["software"] == software
        ]
    for key, values in per_key.items():
        found = list(dict.fromkeys(v for v in values if v))
        if len(found) == 1:
            shown.append(f"{key} {found[0]}")
        elif found:
            shown.append(f"{key} differs by row ({', '.join(found)}; see Details)")
    return shown


def relative_columns_line(results: list[dict[str, Any]], baseline_id: str | None) -> str | None:
    """Why Speed X and Max mem % are empty, when the baseline gave no number to divide by."""
    if baseline_id is None:  # the CPU rows of a run split by card, whose baseline runs on the cards
        return "Speed X and Max mem % are empty: the baseline runs on each card kind (its tables), not on the CPU."
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


def render(results: list[dict[str, Any]], baseline_id: str | None, folder: Path, run_folder: Path | None = None) -> str:
    """Write table.md, table.csv and table.json into folder; return the text to print. run_folder: where the
    run keeps its measured bandwidths, when folder is one card's part of it (runner.card_tables)."""
    from tabulate import tabulate

    bandwidths = roofline.load(run_folder or folder)
    frame = rows(results, baseline_id, bandwidths)
    head = caption(results)
    if results and (line := relative_columns_line(results, baseline_id)):
        head.append(line)
    if frame["Roofline %"].notna().any() and (line := roofline.caption_line(bandwidths)):
        head.append(line)
    charts, problem = drawn(offline_charts, frame, folder)
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
            *markdown_links(charts),
            *([f"Charts could not be drawn: {problem}", ""] if problem else []),
        ]
    )
    write_text_atomic(folder / "table.md", markdown)
    csv_frame = frame.assign(Settings=[" / ".join(s) for s in frame["Settings"]])
    write_text_atomic(folder / "table.csv", csv_frame.to_csv(index=False))
    write_text_atomic(folder / "table.json", csv_frame.to_json(orient="records", indent=2))
    write_html(folder, f"inference-matrix: {folder.name}")
    printed = tabulate(
        display_frame(frame, "; "), headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )
    return "\n".join([*head, "", printed])
