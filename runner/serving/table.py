"""The serving table: a row per (server setting, concurrency level), then a summary row per setting.

Each level row shows what AIPerf measured at that concurrency: output and total
tokens per second, requests per second, time to first token, inter-token and
end-to-end latency at p50 / p90 / p99, failed requests, and the server's peak
memory during the level, and where the engine has a serving benchmark of its own,
that tool's figures on the same level beside the row's (with several fidelity
runs, each tool's spread over them; both tools' median TTFT over all their
requests at the level, with a 95 % interval of the ratio:
runner.serving.agreement), and what the server counted itself over the level
(Server.own_figures: its TTFT from a request's arrival, prompt tokens it took
from a cache, ...). The summary row gives the setting's peak output throughput,
the highest level whose p99 TTFT stayed under the matrix's bound
(``serving.ttft_p99_ms``), and at how many levels its rows agreed with the
engine's own benchmark within 5 % (and, pooled, at how many the interval lies
inside 0.95-1.05, and at how many it tells the tools apart). Written as
serving.md, serving.csv and serving.json beside the offline table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from runner.cpuset import named, parse_cpus
from runner.engines import ENGINES
from runner.report.charts import drawn, markdown_links, serving_charts
from runner.report.html import write_html
from runner.serving.agreement import interval_text
from runner.shared import write_text_atomic

COLUMNS = [
    "Software",
    "Settings",
    "Concurrency",
    "Output Tok/s",
    "Total Tok/s",
    "Req/s",
    "TTFT p50/p90/p99 (ms)",
    "ITL p50/p90/p99 (ms)",
    "E2E p50/p99 (ms)",
    "Errors",
    "Max Mem (MiB)",
    "Notes",
]


def _fmt(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _trio(metrics: dict[str, Any], name: str, stats: tuple[str, ...], digits: int = 1) -> str:
    values = [metrics.get(f"{name}_{s}") for s in stats]
    return "" if all(v is None for v in values) else " / ".join(_fmt(v, digits) for v in values)


def _level_row(result: dict[str, Any], level: dict[str, Any]) -> dict[str, Any]:
    m = level.get("metrics") or {}
    return {
        "Software": result["cell"]["software"],
        "Settings": "; ".join(result["cell"]["label"]),
        "Concurrency": str(level["level"]),
        "Output Tok/s": _fmt(m.get("output_tokens_per_s")),
        "Total Tok/s": _fmt(m.get("total_tokens_per_s")),
        "Req/s": _fmt(m.get("requests_per_s"), 2),
        "TTFT p50/p90/p99 (ms)": _trio(m, "ttft_ms", ("p50", "p90", "p99")),
        "ITL p50/p90/p99 (ms)": _trio(m, "itl_ms", ("p50", "p90", "p99"), 2),
        "E2E p50/p99 (ms)": _trio(m, "e2e_ms", ("p50", "p99")),
        "Errors": "" if not m else f"{m.get('errors', 0):.0f}",
        "Max Mem (MiB)": _fmt(level.get("peak_memory_mib"), 0),
        "Notes": "; ".join(
            filter(
                None,
                [_failure(level), _kept(level), _reference_note(level.get("reference")), _server_note(result, level)],
            )
        ),
    }


def _server_note(result: dict[str, Any], level: dict[str, Any]) -> str:
    """What the server counted itself over the level, as its engine names the figures."""
    found = level.get("server_metrics") or {}
    engine = ENGINES.get(result["cell"].get("engine", ""))
    figures = engine.server.own_figures if engine and engine.server else {}
    parts = [
        f"{found[name]:,.0f} {figure.label}"  # a count
        if figure.stat == "total"
        else f"{figure.label} {found[name]:,.1f}{figure.unit}"
        for name, figure in figures.items()
        if figure.noted and name in found
    ]
    reads = level.get("server_reads") or {}
    if parts and reads:  # each read is served beside the load: a cost the engine's own benchmark runs without
        parts.append(f"read {reads['reads']:,.0f} times, {reads['read_ms_avg']:,.1f} ms a read")
    return "server's own count: " + ", ".join(parts) if parts else ""


def _kept(level: dict[str, Any]) -> str:
    """A level kept from an earlier run of the cell (runner.serving.resume): its server was another start."""
    since = level.get("kept_from")
    return f"measured by the run of {since} (another start of the server)" if since else ""


def _failure(level: dict[str, Any]) -> str:
    return "" if level["status"] == "ok" else f"{level['status']}: {level.get('reason')}"


def _reference_note(reference: dict[str, Any] | None) -> str:
    """The engine's own serving benchmark on the same level: its figures and the row's ratio to them."""
    if not reference:
        return ""
    if reference.get("error"):
        return f"{reference['tool']} failed: {reference['error']}"
    parts = []
    if reference.get("output_tokens_per_s"):
        parts.append(
            f"{reference['output_tokens_per_s']:,.1f} tok/s (this row {reference.get('output_ratio', 0):.2f}x)"
        )
    if reference.get("ttft_ms_p50"):
        parts.append(f"TTFT p50 {reference['ttft_ms_p50']:,.1f} ms ({reference.get('ttft_p50_ratio', 0):.2f}x)")
    note = f"{reference['tool']}: " + ", ".join(parts)
    runs = reference.get("runs") or []
    if len(runs) > 1 and reference.get("ttft_ms_p50_ours") and reference.get("ttft_ms_p50_theirs"):
        ours, theirs = reference["ttft_ms_p50_ours"], reference["ttft_ms_p50_theirs"]
        note += (
            f"; {len(runs)} runs of each: TTFT p50 {ours[0]:,.1f}-{ours[2]:,.1f} ms here, {theirs[0]:,.1f}-"
            f"{theirs[2]:,.1f} ms there (medians {reference['ttft_p50_ratio_of_medians']:.2f}x), output medians "
            f"{reference.get('output_ratio_of_medians', 0):.2f}x"
        )
    pooled = reference.get("pooled_ttft")
    if pooled:
        ours, theirs = pooled["ttft_ms_p50"]
        note += (
            f"; pooled ({pooled['requests'][0]} and {pooled['requests'][1]} requests): TTFT p50 {ours:,.1f} and "
            f"{theirs:,.1f} ms, {pooled['ratio']:.2f}x ({interval_text(pooled, ', resampling waves')})"
        )
        if pooled.get("reference_failed"):
            failed, tool = pooled["reference_failed"], reference["tool"]
            note += f"; {failed} of {tool}'s requests failed (left out of its figures and the pooled medians)"
        if pooled.get("resend_ms_p50"):  # where each tool's next request lands in the server's step (agreement)
            here, there = pooled["resend_ms_p50"]
            note += f"; next request sent {here:.1f} and {there:.1f} ms after a completion"
        if pooled.get("ttft_ms_mean_per_run"):  # which part of a gap the server's own count shares (agreement)
            means = pooled["ttft_ms_mean_per_run"]
            note += (
                f"; mean TTFT per run: {_ms_list(means['ours'])} here, the server's own count through these runs "
                f"{_ms_list(means['server'])}, {_ms_list(means['theirs'])} there"
            )
    elif reference.get("pooled_error"):  # the level's per-request files were there but could not be read
        note += f"; pooled TTFT not made: {reference['pooled_error'][:120]}"
    if reference.get("runs_error"):
        note += f"; fidelity {reference['runs_error']}"
    return note


def _ms_list(values: list[float | None]) -> str:
    return ", ".join("-" if v is None else f"{v:,.1f}" for v in values) + " ms"


def summary_row(result: dict[str, Any], ttft_bound_ms: float) -> dict[str, Any]:
    """Peak output throughput and the highest level whose p99 TTFT stayed under the bound."""
    ok = [lv for lv in result.get("levels", []) if lv["status"] == "ok"]
    row = dict.fromkeys(COLUMNS, "")
    row.update(Software=result["cell"]["software"], Settings="; ".join(result["cell"]["label"]), Concurrency="summary")
    if result["status"] != "ok" and not ok:
        said = "not run here" if result["status"] == "unsupported" else result["status"]
        row["Notes"] = f"{said}: {result.get('reason')}"
        return row
    best = max(ok, key=lambda lv: lv["metrics"]["output_tokens_per_s"] or 0, default=None)
    under = [lv["level"] for lv in ok if (lv["metrics"].get("ttft_ms_p99") or 0) < ttft_bound_ms]
    notes = []
    if best:
        row["Output Tok/s"] = _fmt(best["metrics"]["output_tokens_per_s"])
        notes.append(f"peak output at concurrency {best['level']}")
    notes.append(
        f"p99 TTFT under {ttft_bound_ms:g} ms up to concurrency {max(under)}"
        if under
        else f"p99 TTFT never under {ttft_bound_ms:g} ms"
    )
    notes.append(_fidelity_summary(ok))
    if result["status"] != "ok":
        notes.append(f"{result['status']}: {result.get('reason')}")
    peaks = [lv.get("peak_memory_mib") for lv in result.get("levels", []) if lv.get("peak_memory_mib")]
    row["Max Mem (MiB)"] = _fmt(max(peaks), 0) if peaks else ""
    row["Notes"] = "; ".join(filter(None, notes))
    return row


def _fidelity_summary(levels: list[dict[str, Any]], within: float = 0.05) -> str:
    """At how many levels the row agreed with the engine's own serving benchmark within 5 % (output tok/s, median
    TTFT), first runs, and over the fidelity runs' medians where there were several."""
    found = [lv["reference"] for lv in levels if lv.get("reference") and not lv["reference"].get("error")]
    if not found:
        return ""

    def agreeing(key: str) -> int:
        return sum(1 for r in found if r.get(key) and round(abs(r[key] - 1), 4) <= within)  # ratios keep 4 digits

    text = (
        f"against {found[0]['tool']}, within {within:.0%} at {agreeing('output_ratio')} of {len(found)} levels "
        f"in output tok/s, {agreeing('ttft_p50_ratio')} in median TTFT"
    )
    if any(r.get("ttft_p50_ratio_of_medians") for r in found):
        text += (
            f" ({agreeing('output_ratio_of_medians')} and {agreeing('ttft_p50_ratio_of_medians')} "
            "over the fidelity runs' medians)"
        )
    pooled = [r["pooled_ttft"] for r in found if r.get("pooled_ttft")]
    if pooled:
        close = sum(1 for p in pooled if round(abs(p["ratio"] - 1), 4) <= within)
        intervals = [p["interval"] for p in pooled if p.get("interval")]
        shown = sum(1 for low, high in intervals if 1 - within <= low and high <= 1 + within)
        apart = sum(1 for low, high in intervals if not low <= 1 <= high)
        text += (
            f"; median TTFT pooled over each level's runs within {within:.0%} at {close} of {len(pooled)} "
            f"(95% interval inside {1 - within:.2f}-{1 + within:.2f} at {shown}), told apart (interval without "
            f"1.00) at {apart}"
        )
    return text


def frame(results: list[dict[str, Any]], ttft_bound_ms: float) -> pd.DataFrame:
    rows = []
    for result in results:
        rows += [_level_row(result, level) for level in result.get("levels", [])]
        rows.append(summary_row(result, ttft_bound_ms))
    return pd.DataFrame(rows, columns=COLUMNS)


def _requests(sweep: dict[str, Any]) -> str:
    if sweep.get("rounds"):
        count = f"max({sweep['requests']}, {sweep['rounds']} x the level) requests"
    else:
        count = f"{sweep['requests']} requests (at least the level)"
    if sweep.get("duration_s"):  # those in flight at the end are waited for and counted
        count += f" or {sweep['duration_s']:g} s of sending, whichever ends first,"
    return count


def _lengths(sweep: dict[str, Any]) -> str:
    ratio = sweep.get("length_range_ratio")
    if not ratio:
        exact = f"exactly {sweep['new_tokens']} new tokens per request (server-counted)"
        return f"{sweep['prompt_tokens']} prompt tokens, {exact}"
    return (
        f"prompt and new tokens drawn for each request uniformly from {_window(sweep['prompt_tokens'], ratio)} and "
        f"{_window(sweep['new_tokens'], ratio)} (range ratio {ratio:g}), each "
        "request exactly the new tokens it asked for (server-counted)"
    )


def _window(n: int, ratio: float) -> str:
    return f"{math.floor(n * (1 - ratio))}-{math.ceil(n * (1 + ratio))}"


SERVER_COUNTS = (
    "Server's own counts: the load generator read each server's metrics (/metrics) 3 times a second through each "
    "level; a count is over its measured window, whose edges fall between reads"
)


def caption(results: list[dict[str, Any]]) -> list[str]:
    sweep = results[0]["workload"]
    model = results[0]["model"]
    synthetic = "SYNTHETIC random weights, real architecture and tokenizer" if model.get("synthetic") else "real"
    loadgen = results[0].get("loadgen") or {}
    return [
        f"Model: {model['name']} ({synthetic})",
        *_cpu_lines(results),
        f"Serving workload: {_lengths(sweep)}, {_requests(sweep)} per level after {sweep['warmup_requests']} "
        f"warm-up, closed loop at each concurrency, streamed",
        f"Load generator: {loadgen.get('name', '?')} {loadgen.get('version', '')}; memory: the server's peak during "
        "each level (device memory on its GPUs, or the process tree's RSS on CPU)",
        *([SERVER_COUNTS] if sweep.get("server_metrics") else []),
    ]


def _cpu_lines(results: list[dict[str, Any]]) -> list[str]:
    """Where CPU cells' servers and the load generators timing them ran (apart, or sharing one CPU)."""
    lines = []
    for split in dict.fromkeys(json.dumps(r["cpus"], sort_keys=True) for r in results if r.get("cpus")):
        cpus = json.loads(split)
        server, clients = set(parse_cpus(cpus["server"])), set(parse_cpus(cpus["load_generators"]))
        if server == clients:
            lines.append(f"CPU servers: on {named(cpus['server'])}, shared with the load generators timing them")
        else:
            own = f" ({named(sorted(clients - server))} theirs alone)" if server & clients else ""
            lines.append(
                f"CPU servers: on {named(cpus['server'])}; the load generators timing them on "
                f"{named(cpus['load_generators'])}{own}"
            )
    return lines


def render_serving(results: list[dict[str, Any]], ttft_bound_ms: float, folder: Path) -> str:
    from tabulate import tabulate

    table = frame(results, ttft_bound_ms)
    text = "\n".join(
        [
            *(f"{line}  " for line in caption(results)),
            "",
            tabulate(table, headers="keys", tablefmt="github", showindex=False),
        ]
    )
    charts, problem = drawn(serving_charts, results, ttft_bound_ms, folder)
    links = markdown_links(charts) + ([f"Charts could not be drawn: {problem}", ""] if problem else [])
    write_text_atomic(folder / "serving.md", "\n".join([text, "", *links]) + "\n")
    write_text_atomic(folder / "serving.csv", table.to_csv(index=False))
    write_text_atomic(folder / "serving.json", json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
    write_html(folder, f"inference-matrix: {folder.name}")
    return text
