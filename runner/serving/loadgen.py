"""The load generator of serving cells: NVIDIA's AIPerf (pinned), one run per concurrency level.

Each level is one ``aiperf profile`` against the server's OpenAI-compatible
completions endpoint, streamed (so time to first token and inter-token latency
are seen), closed-loop at the level's concurrency for the sweep's number of
requests after its warm-up requests, with synthetic prompts of exactly the
sweep's prompt tokens (made with the checkpoint's own tokenizer; a prompt of its
own for every request, and other prompts at each level, so no server answers one
from its prefix cache) and
``max_tokens`` of exactly its new tokens, plus whatever the engine's server
needs to keep the end token from stopping a request early. Tokens are counted
as the server reports them (its usage fields): a random model's text does not
re-tokenise to the same count, so counting on the client would misstate them.
Connections are pooled (kept alive, as real clients keep them) unless the
engine's server needs one per request (Server.connections, which says why): a
connection per request is not free (on CI's CPU it cost one server about 4 ms of
TTFT and a quarter of its output rate at concurrency 1). AIPerf writes its
summary as JSON (``profile_export_aiperf.json``) and every request as a line;
``level_metrics`` keeps what the table shows and the raw export stays in the run
folder beside the cell. Where the engine's server counts for itself (Prometheus
metrics at ``/metrics``: Server.own_figures), AIPerf scrapes them through the
level and reduces them to its measured window (``server_metrics_export.json``);
``server_figures`` keeps the ones the engine names, the server's side of the row.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from runner.errors import UserError

AIPERF_VERSION = "0.13.0"
SUMMARY_FILE = "profile_export_aiperf.json"
RECORDS_FILE = "profile_export.jsonl"  # one line per request: its timings and the server's token counts
INPUTS_FILE = "inputs.json"  # every request's payload, by session (max_tokens among them)
SERVER_METRICS_FILE = "server_metrics_export.json"  # the server's own metrics over the measured window
# AIPerf's metric tags -> our names; latency in ms, throughput per second
LATENCIES = {
    "time_to_first_token": "ttft_ms",
    "inter_token_latency": "itl_ms",
    "request_latency": "e2e_ms",
}
PERCENTILES = ("p50", "p90", "p99")


def find_aiperf(given: str | None) -> str:
    """The aiperf executable: the one named, else .venv/aiperf's (make setup-aiperf), else PATH's."""
    candidates = [given] if given else [str(Path(sys.prefix) / "aiperf" / "bin" / "aiperf"), "aiperf"]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    raise UserError(
        f"no load generator: {'--loadgen ' + given if given else 'aiperf'} not found; serving cells drive their "
        f"server with AIPerf {AIPERF_VERSION}: run `make setup-aiperf` (it installs into .venv/aiperf) or pass "
        "--loadgen PATH"
    )


def level_seed(level: int, run: int = 1) -> int:
    """The random seed of one level's prompts (both load generators): the same for every cell at that level, so
    each server gets the same prompts, and another at each level, so no level re-sends an earlier level's prompts,
    which a server's prefix cache would answer without its prefill; another again for each further run of a level
    (the fidelity check's, serving.fidelity_runs)."""
    return level + 10_000 * (run - 1)


def level_requests(sweep: dict[str, Any], level: int) -> int:
    """Requests sent at one concurrency level: the sweep's count, at least the level, and at least rounds x the
    level where the matrix sets rounds (so a high level is not over before every slot has been busy a few times)."""
    return max(sweep["requests"], level, sweep.get("rounds", 0) * level)


def reference_sweep(sweep: dict[str, Any], sent: float | None) -> dict[str, Any]:
    """The sweep an engine's own benchmark runs after a level: where the level was bounded by time
    (duration_s), as many requests as the load generator completed in it, since that tool takes a count."""
    if not sweep.get("duration_s") or not sent:
        return sweep
    return {**sweep, "requests": int(sent), "rounds": 0, "duration_s": 0}


def aiperf_arguments(
    url: str,
    model_name: str,
    tokenizer: str,
    level: int,
    sweep: dict[str, Any],
    request_extras: dict[str, Any],
    artifacts: Path,
    connections: str = "pooled",
    run: int = 1,
    server_metrics: bool = False,
) -> list[str]:
    """One level's ``aiperf`` arguments (``profile ...``), for the executor's run_tool (run: which run of the level,
    for the fidelity check's further runs, each with prompts of its own; server_metrics: whether to scrape the
    server's own Prometheus metrics through the level, from the url's /metrics)."""
    command = [
        "profile",
        "--url", url, "--endpoint-type", "completions", "--streaming",
        "--model", model_name, "--tokenizer", tokenizer,
        "--concurrency", str(level),
        "--request-count", str(level_requests(sweep, level)),
        "--isl", str(sweep["prompt_tokens"]), "--synthetic-input-tokens-stddev", "0",
        "--osl", str(sweep["new_tokens"]), "--osl-stddev", "0",
        "--use-legacy-max-tokens",
        "--use-server-token-count",  # the server's own usage counts: random text does not re-tokenise to itself
        "--connection-reuse-strategy", connections,
        # a prompt of its own for every request, warm-up included: AIPerf's default pool holds 100 prompts,
        # and a prompt sent again is served from the prefix cache, its TTFT then without prefill
        "--random-seed", str(level_seed(level, run)),
        "--num-dataset-entries", str(sweep["warmup_requests"] + level_requests(sweep, level)),
        "--dataset-sampling-strategy", "shuffle",
        "--wait-for-model-timeout", "0",
        *(["--server-metrics-formats", "json"] if server_metrics else ["--no-server-metrics"]),
        "--no-gpu-telemetry", "--no-auto-plot",
        "--ui-type", "none",
        "--artifact-dir", str(artifacts),
    ]  # fmt: skip
    if sweep.get("duration_s"):  # no new request after this long; those in flight then are waited for
        command += ["--benchmark-duration", f"{sweep['duration_s']:g}", "--benchmark-grace-period", "inf"]
    ratio = sweep.get("length_range_ratio", 0)
    if ratio:  # lengths drawn per request from [floor(n(1-r)), ceil(n(1+r))] (AIPerf's default corpus style):
        # the window the random datasets of the engines' own serving benchmarks draw from
        command += ["--random-range-ratio", f"{ratio:g}"]
    if sweep["warmup_requests"]:  # AIPerf takes no warm-up count of 0: none is asked for then
        command += ["--warmup-request-count", str(sweep["warmup_requests"])]
    if request_extras:  # one JSON object: AIPerf reads it typed (its key:value form splits on commas, coerces)
        command += ["--extra-inputs", json.dumps(request_extras)]
    return command


def _stat(summary: dict[str, Any], tag: str, stat: str) -> float | None:
    entry = summary.get(tag)
    if isinstance(entry, dict) and entry.get(stat) is not None:
        return float(entry[stat])
    return None


def level_metrics(artifacts: Path) -> dict[str, Any]:
    """What one level measured, from AIPerf's summary JSON in its artifact folder."""
    path = artifacts / SUMMARY_FILE
    if not path.is_file():
        raise RuntimeError(f"AIPerf wrote no {SUMMARY_FILE} in {artifacts}")
    summary = json.loads(path.read_text())
    metrics: dict[str, Any] = {
        "output_tokens_per_s": _stat(summary, "output_token_throughput", "avg"),
        "total_tokens_per_s": _stat(summary, "total_token_throughput", "avg"),
        "output_tokens_per_s_per_user": _stat(summary, "output_token_throughput_per_user", "avg"),
        "requests_per_s": _stat(summary, "request_throughput", "avg"),
        "requests": _stat(summary, "request_count", "avg"),
        "errors": _stat(summary, "error_request_count", "avg") or 0,
        "complete": bool(summary.get("is_complete")) and not summary.get("was_cancelled"),
        "output_tokens_mean": _stat(summary, "output_sequence_length", "avg"),
        "output_tokens_min": _stat(summary, "output_sequence_length", "min"),
        "output_tokens_max": _stat(summary, "output_sequence_length", "max"),
        "prompt_tokens_mean": _stat(summary, "input_sequence_length", "avg"),
        "prompt_tokens_min": _stat(summary, "input_sequence_length", "min"),
        "prompt_tokens_max": _stat(summary, "input_sequence_length", "max"),
        "duration_s": _stat(summary, "benchmark_duration", "avg"),
        **asked_lengths(artifacts),
    }
    for tag, name in LATENCIES.items():
        for stat in ("avg", *PERCENTILES):
            metrics[f"{name}_{stat}"] = _stat(summary, tag, stat)
    return metrics


def server_figures(artifacts: Path, figures: dict[str, Any]) -> dict[str, float]:
    """The figures the engine's server counts itself (Server.own_figures: name -> OwnFigure), from AIPerf's export of
    its metrics over the level's measured window: a counter's change summed over its series (label sets), a
    histogram's statistic from its first series; scaled. Empty where AIPerf wrote no such export, or the server
    had none of them."""
    path = artifacts / SERVER_METRICS_FILE
    if not figures or not path.is_file():
        return {}
    metrics = json.loads(path.read_text()).get("metrics") or {}
    found: dict[str, float] = {}
    for name, figure in figures.items():
        stats = [series.get("stats") or {} for series in (metrics.get(figure.metric) or {}).get("series", [])]
        values = [float(s[figure.stat]) for s in stats if isinstance(s.get(figure.stat), int | float)]
        if values:
            found[name] = (sum(values) if figure.stat == "total" else values[0]) * figure.scale
    return found


def server_reads(artifacts: Path) -> dict[str, float]:
    """How often AIPerf read the server's metrics through the level (warm-up and measured window) and how long a read
    took on average (ms): each read is served by the server beside the load, perhaps by the same process that
    parses and tokenizes the requests. Empty where AIPerf wrote no such export."""
    try:
        endpoints = json.loads((artifacts / SERVER_METRICS_FILE).read_text())["summary"]["endpoint_info"].values()
    except (OSError, ValueError, KeyError, AttributeError):
        return {}
    counted = [(e["total_fetches"], e["avg_fetch_latency_ms"]) for e in endpoints if e.get("total_fetches")]
    reads = sum(n for n, _ in counted)
    if not reads:
        return {}
    return {"reads": reads, "read_ms_avg": round(sum(n * ms for n, ms in counted) / reads, 3)}


def profiling_records(artifacts: Path) -> list[dict[str, Any]]:
    """The measured requests' records in AIPerf's per-request export (warm-up left out), as written or gzipped as
    committed results keep it; none where there is no export."""
    path = artifacts / RECORDS_FILE
    if path.exists():
        text = path.read_text()
    elif path.with_suffix(".jsonl.gz").exists():
        text = gzip.decompress(path.with_suffix(".jsonl.gz").read_bytes()).decode()
    else:
        return []
    records = (json.loads(line) for line in text.splitlines())
    return [r for r in records if r.get("metadata", {}).get("benchmark_phase") == "profiling"]


def asked_lengths(artifacts: Path) -> dict[str, Any]:
    """Each measured request's max_tokens (from AIPerf's inputs) beside the tokens the server said it returned
    (its record): the range asked for, and how many requests returned another count than they asked for, with
    the first few of them as (asked, returned). Empty where AIPerf wrote no per-request files."""
    try:
        sessions = json.loads((artifacts / INPUTS_FILE).read_text())["data"]
        records = profiling_records(artifacts)
    except (OSError, ValueError, KeyError):
        return {}
    asked = {
        (entry["session_id"], turn): payload.get("max_tokens", payload.get("max_completion_tokens"))
        for entry in sessions
        for turn, payload in enumerate(entry.get("payloads", []))
    }
    pairs = []
    for record in records:
        meta = record["metadata"]
        returned = (record.get("metrics", {}).get("output_sequence_length") or {}).get("value")
        pairs.append((asked.get((meta.get("conversation_id"), meta.get("turn_index", 0))), returned))
    known = [n for n, _ in pairs if n is not None]
    if not known:
        return {}
    wrong = [(n, got) for n, got in pairs if n is None or got != n]
    return {
        "output_tokens_asked_min": min(known),
        "output_tokens_asked_max": max(known),
        "output_tokens_not_as_asked": len(wrong),
        "output_tokens_not_as_asked_first": wrong[:5],
    }


def error_lines(log_text: str, most_chars: int = 400) -> str:
    """AIPerf's own words when it failed: the text of its last error box, else its last lines."""
    lines = log_text.splitlines()
    # its error boxes: "╭─ Error ─..." (a bad argument), "╭─ AIPerf System Exit Errors ─..." (a failed run)
    starts = [i for i, line in enumerate(lines) if line.startswith("╭─") and "Error" in line]
    if starts:
        box = []
        for line in lines[starts[-1] + 1 :]:
            if line.startswith("╰"):
                break
            box.append(line.strip("│ "))
        text = " ".join(part for part in box if part)
    else:
        text = " / ".join(line.strip() for line in lines[-3:] if line.strip())
    return " ".join(text.split())[:most_chars]
