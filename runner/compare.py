"""`python -m runner compare RUN_A RUN_B [...]`: what changed between run folders, row by row.

Each later run is compared with the first. Cells are matched by id, or, when the
ids differ (another model spec or workload), by engine, settings and GPU count.
Per matched row: tok/s, time to first token and peak memory in both runs and
the change. A change in tok/s or TTFT counts only when the two runs' ranges of
repetitions (min to max) do not overlap, so a move inside the runs' own spread
reads "no change"; memory counts when it moved by more than 1 %. Rows that did
not measure in one run are listed with that run's status. Beside the rows, the
runs' systems side by side: GPU and driver, engine releases, torch, executor,
runner. Written as compare.md, compare.csv and a self-contained compare.html
(the report's sortable tables) into the output folder (-o, default
runs/compare/), and printed.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from runner.errors import UserError
from runner.host import result_hardware
from runner.provenance import describe
from runner.results import read_result
from runner.shared import write_text_atomic

MEMORY_CHANGE = 0.01  # a peak that moved by less than this share reads as unchanged


def parse_compare_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner compare",
        description="Compare run folders row by row: each later run against the first.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (the first is the reference)")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("runs") / "compare", help="where compare.md/.csv/.html go"
    )
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("name at least two run folders")
    return args


def load_run(folder: Path) -> list[dict[str, Any]]:
    """The offline results in a run folder (serving cells have no batch-1 rows to compare)."""
    cells = folder / "cells"
    if not cells.is_dir():
        raise UserError(f"{folder}: not a run folder (no cells/); name folders `python -m runner` wrote")
    found = [read_result(path) for path in sorted(cells.glob("*.json")) if not path.name.startswith(".")]
    results = [r for r in found if r and r.get("workload", {}).get("kind") != "serving" and "levels" not in r]
    if not results:
        raise UserError(f"{folder}: no batch-1 results in cells/")
    return results


def match_key(result: dict[str, Any]) -> str:
    """What matches rows whose cell ids differ: the engine, its settings and how many GPUs."""
    cell = result["cell"]
    return json.dumps([cell["engine"], cell["settings"], len(cell.get("gpus") or [])], sort_keys=True)


def match(reference: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[tuple[dict | None, dict | None]]:
    """Pairs (reference row, other row), by cell id first, then by engine + settings + GPU count."""
    by_id = {r["cell"]["id"]: r for r in other}
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in other:
        by_key.setdefault(match_key(r), []).append(r)
    used: set[str] = set()
    pairs: list[tuple[dict | None, dict | None]] = []
    for r in reference:
        found = by_id.get(r["cell"]["id"])
        if found is None or found["cell"]["id"] in used:
            found = next((o for o in by_key.get(match_key(r), []) if o["cell"]["id"] not in used), None)
        if found is not None:
            used.add(found["cell"]["id"])
        pairs.append((r, found))
    pairs += [(None, o) for o in other if o["cell"]["id"] not in used]
    return pairs


def _values(result: dict[str, Any] | None, name: str) -> list[float]:
    if not result or result.get("status") != "ok":
        return []
    return [float(v) for v in ((result.get("metrics") or {}).get(name) or {}).get("values") or []]


def _median(result: dict[str, Any] | None, name: str) -> float | None:
    if not result or result.get("status") != "ok":
        return None
    value = ((result.get("metrics") or {}).get(name) or {}).get("median")
    return float(value) if value is not None else None


def verdict(a: list[float], b: list[float], higher_is_better: bool) -> str:
    """'faster'/'slower' (or 'better'/'worse') when the ranges of repetitions do not overlap, else 'no change'."""
    if not a or not b:
        return ""
    if min(b) > max(a):
        return "faster" if higher_is_better else "slower"
    if max(b) < min(a):
        return "slower" if higher_is_better else "faster"
    return "no change"


def _memory(result: dict[str, Any] | None) -> float | None:
    if not result or result.get("status") != "ok":
        return None
    return (result.get("memory") or {}).get("peak_mib")


def memory_verdict(change_pct: float | None) -> str:
    if change_pct is None:
        return ""
    if abs(change_pct) <= 100 * MEMORY_CHANGE:
        return "no change"
    return "more" if change_pct > 0 else "less"


def _change(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else 100.0 * (b - a) / a


def compare_rows(reference: list[dict[str, Any]], other: list[dict[str, Any]]) -> pd.DataFrame:
    records = []
    for a, b in match(reference, other):
        either = a or b
        assert either is not None
        tps_a, tps_b = _median(a, "tokens_per_s"), _median(b, "tokens_per_s")
        ttft_a, ttft_b = _median(a, "ttft_s"), _median(b, "ttft_s")
        mem_a, mem_b = _memory(a), _memory(b)
        mem_change = _change(mem_a, mem_b)
        records.append(
            {
                "Software": either["cell"]["software"],
                "Settings": "; ".join(either["cell"]["label"]),
                "Tok/s A": tps_a,
                "Tok/s B": tps_b,
                "Tok/s change %": _change(tps_a, tps_b),
                "Tok/s verdict": verdict(_values(a, "tokens_per_s"), _values(b, "tokens_per_s"), True),
                "TTFT ms A": 1000 * ttft_a if ttft_a else None,
                "TTFT ms B": 1000 * ttft_b if ttft_b else None,
                "TTFT change %": _change(ttft_a, ttft_b),
                "TTFT verdict": verdict(_values(a, "ttft_s"), _values(b, "ttft_s"), False),
                "Max Mem A": mem_a,
                "Max Mem B": mem_b,
                "Mem change %": mem_change,
                "Mem verdict": memory_verdict(mem_change),
                "Status A": a["status"] if a else "absent",
                "Status B": b["status"] if b else "absent",
                "Cell A": a["cell"]["id"] if a else "",
                "Cell B": b["cell"]["id"] if b else "",
            }
        )
    return pd.DataFrame.from_records(records)


def system(results: list[dict[str, Any]]) -> dict[str, str]:
    """What a run ran on and with, one text per aspect (several values joined when its rows differ)."""

    def joined(values: list[str | None]) -> str:
        return "; ".join(dict.fromkeys(v for v in values if v)) or "?"

    engines = joined(
        [
            f"{r['cell']['software']} {(r.get('environment') or {}).get('engine_version')}"
            for r in results
            if (r.get("environment") or {}).get("engine_version")
        ]
    )
    return {
        "Hardware": joined([result_hardware(r) for r in results]),
        "Engines": engines,
        "torch": joined([(r.get("environment") or {}).get("torch") for r in results]),
        "Executor": joined([r.get("executor") for r in results]),
        "Runner": joined([describe(r.get("runner")) for r in results]),
        "Measured": joined([(r.get("finished_at") or "")[:10] for r in results]),
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:+.1f}" if digits == -1 else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def display(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    for column in shown.columns:
        if column.endswith("%"):
            shown[column] = [_fmt(v, -1) for v in shown[column]]
        elif column.startswith(("Tok/s", "TTFT ms", "Max Mem")) and "verdict" not in column:
            shown[column] = [_fmt(v, 0 if column.startswith("Max Mem") else 2) for v in shown[column]]
    return shown


def run_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from runner.report.html import page, table_html

    runs = [load_run(folder) for folder in args.runs]
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    systems = pd.DataFrame({str(folder): system(results) for folder, results in zip(args.runs, runs, strict=True)})
    systems.insert(0, "", systems.index)
    lines, frames, sections = [], [], []
    for folder, results in zip(args.runs[1:], runs[1:], strict=True):
        frame = compare_rows(runs[0], results)
        frames.append(frame.assign(**{"Run A": str(args.runs[0]), "Run B": str(folder)}))
        title = f"A = {args.runs[0]}, B = {folder}"
        shown = display(frame)
        table = tabulate(shown, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
        lines += [f"## {title}", "", table, ""]
        sections.append((title, shown))
    head = [
        "# Run comparison",
        "",
        "A change in tok/s or TTFT counts only when the two runs' ranges of repetitions (min-max) do not "
        "overlap; memory when it moved by more than 1 %.",
        "",
        tabulate(systems, headers="keys", tablefmt="github", showindex=False, disable_numparse=True),
        "",
    ]
    text = "\n".join(head + lines)
    write_text_atomic(out / "compare.md", text)
    write_text_atomic(out / "compare.csv", pd.concat(frames).to_csv(index=False))
    body = [f"<p>{html.escape(head[2])}</p>", table_html(systems)]
    for title, shown in sections:
        body += [f"<h2>{html.escape(title)}</h2>", table_html(shown)]
    write_text_atomic(out / "compare.html", page("inference-matrix: run comparison", body))
    print(text)
    print(f"\ncomparison: {out / 'compare.md'} (also compare.csv, compare.html)")
    return 0
