"""How closely the load generator's median TTFT agrees with the engine's own benchmark's, request by request.

One closed-loop run at a fixed concurrency sends its requests in waves of the
level's size, and a wave's TTFT depends on how its arrivals fall against the
server's steps: one run's median can sit between waves, and each tool's median
moves from run to run by more than 5 % (measured on an H100, concurrency 4: 20.7-31.3
ms over three runs of AIPerf, 22.2-32.3 ms of ``vllm bench serve``). So the
fidelity check pools every request of every run of each tool at a level and
compares the two pooled medians, with an interval: the ratio recomputed over
2,000 resamplings of whole waves (the requests of a run cut into consecutive
blocks of the level's size, by send time, drawn with replacement), so that
requests that shared a wave are kept together. Each run's first wave is drawn
only among first waves, the later ones among later ones: every run starts with
one wave sent at once to an idle server (with lengths drawn per request, 70 ms
against a steady 25 ms at concurrency 16 on an H100), and a resampling free to
draw six start waves of twelve moved the median from one kind to the other
(an interval of 0.53-1.87 around runs whose medians agreed within 10 %). An
interval that holds 1.00 says the runs cannot tell the tools apart; one that
excludes it says they differ. With one run there is no interval: its single
start wave would count as known. Only runs that both tools finished count.

Beside it, each tool's resend delay: how long after a request ended its closed
loop sent the next one (``vllm bench serve``, one asyncio loop: 0.2 ms; AIPerf,
whose freed slot goes from a worker process to its timing manager and back:
3-5 ms, on an H100). A request ends at the end of one of the server's steps, so
the next one lands at a fixed point of the step then running with the one tool
and a few milliseconds into it with the other. That shapes the TTFT of the
later waves, not how either tool measures it: on an H100 at concurrency 16
(lengths drawn), ``vllm bench serve``'s fell into two modes one step apart
(20-21 and 27-29 ms: the request made the next step or waited one more),
AIPerf's between them (24-25 ms); the median of all requests, a quarter of them
first-wave ones, lies at the later waves' two-thirds point, in the upper mode
of the one and the middle of the other (25.4 against 27.4 ms, where the later
waves' medians were 24.9 and 23.7).

Where the server counts its own TTFT (``server_metrics``; vLLM from when its input processor took the request,
after HTTP parsing and tokenization, to the first token), each run's mean TTFT by the load generator, by the
server over the load generator's run, and by the engine's benchmark stand side by side: a gap between the two
tools that the server's own count shares is in the engine; one it does not share lies before the engine takes
the request or after its first token (on an H200 at concurrency 4, vLLM fp8, long prompts: AIPerf 92-100 ms,
the server's own count through AIPerf's runs 82-87, ``vllm bench serve`` 81-85).
"""

from __future__ import annotations

import bisect
import json
import random
import statistics
from pathlib import Path
from typing import Any

from runner.engines import ENGINES
from runner.engines.base import OwnFigure
from runner.serving.loadgen import profiling_records, server_figures

RESAMPLES = 2000
SEED = 0  # the same interval every time the same requests are read
MIN_RUNS = 2  # runs both tools finished, for an interval
FOLLOWS_MS = 50.0  # a send this soon after a completion answered it (a closed loop's resend)


def run_folders(level_folder: Path) -> list[Path]:
    """A level's fidelity runs: its own folder (run 1), then run2/, run3/, ..."""
    more = sorted(level_folder.glob("run[0-9]*"), key=lambda p: int(p.name[3:]))
    return [level_folder, *more]


def loadgen_requests(folder: Path) -> list[tuple[float, float | None, float]]:
    """The measured requests of one AIPerf run as (sent, ended, TTFT), ms, in send order; none if absent."""
    found = []
    for record in profiling_records(folder):
        meta, metrics = record["metadata"], record.get("metrics", {})
        if "time_to_first_token" in metrics:
            ended = meta.get("request_end_ns")
            sent = meta["request_start_ns"] / 1e6
            found.append((sent, ended / 1e6 if ended else None, metrics["time_to_first_token"]["value"]))
    return sorted(found, key=lambda request: request[0])  # by send time alone: an end may be unknown


def reference_records(folder: Path) -> list[dict[str, Any]]:
    """The per-request records the engine's own benchmark kept in one run (reference.json's "requests"), or none."""
    try:
        return json.loads((folder / "reference.json").read_text()).get("requests") or []
    except (OSError, ValueError):
        return []


def reference_requests(folder: Path) -> list[tuple[float, float | None, float]]:
    """The requests the engine's own benchmark sent in one run as (sent, ended, TTFT), ms, in send order, where
    it kept them (reference.json's "requests")."""
    return timed_requests(reference_records(folder))


def timed_requests(records: list[dict[str, Any]]) -> list[tuple[float, float | None, float]]:
    """The engine benchmark's records that did not fail, as (sent, ended, TTFT), ms, in send order."""
    found = [
        (r["sent_s"] * 1e3, r["sent_s"] * 1e3 + r["e2e_ms"] if "e2e_ms" in r else None, r["ttft_ms"])
        for r in records
        if not r.get("error")
    ]
    return sorted(found, key=lambda request: request[0])  # by send time alone: an end may be unknown


def loadgen_ttfts(folder: Path) -> list[float]:
    """The measured requests' TTFT (ms) in AIPerf's per-request export of one run, in send order; none if absent."""
    return [ttft for _, _, ttft in loadgen_requests(folder)]


def reference_ttfts(folder: Path) -> list[float]:
    """The TTFT (ms) of each request the engine's own benchmark sent in one run, in send order, where it kept them."""
    return [ttft for _, _, ttft in reference_requests(folder)]


def resends(requests: list[tuple[float, float | None, float]], level: int) -> list[tuple[float, float]]:
    """How long after a completion a closed loop sent its next request, with that request's TTFT (ms): each send
    after the run's first wave, timed from the last request that ended before it, where one ended within
    FOLLOWS_MS. Empty where the run kept no end times."""
    if any(ended is None for _, ended, _ in requests):
        return []
    ends = sorted(ended for _, ended, _ in requests)
    found = []
    for sent, _, ttft in requests[level:]:
        before = bisect.bisect_right(ends, sent)
        if before and sent - ends[before - 1] <= FOLLOWS_MS:
            found.append((sent - ends[before - 1], ttft))
    return found


def waves(ttfts: list[float], level: int) -> list[list[float]]:
    """One run's requests cut into the waves a closed loop sends: consecutive blocks of the level's size."""
    return [ttfts[i : i + level] for i in range(0, len(ttfts), level)]


def pooled_ttft(level_folder: Path, level: int, own_ttft: OwnFigure | None = None) -> dict[str, Any] | None:
    """Each tool's median TTFT over every request of the level's runs that both tools finished (the tools take
    turns, so a run of one whose turn of the other was cut short would weigh its own moment), their ratio and its
    95 % interval (None from fewer than MIN_RUNS such runs).

    None where either tool left no per-request timings (an engine benchmark without them, runs cut short).
    With own_ttft (the server's own TTFT figure), each such run's mean TTFT by both tools and by the server over
    the load generator's run (``ttft_ms_mean_per_run``; the server's None where its count held no request)."""
    runs, failed = [], 0  # failed: the engine benchmark's requests that failed in those runs
    for folder in run_folders(level_folder):
        ours, records = loadgen_requests(folder), reference_records(folder)
        theirs = timed_requests(records)
        if ours and theirs:  # a run only where both tools finished it
            runs.append((folder, ours, theirs))
            failed += sum(bool(r.get("error")) for r in records)
    pairs = [(ours, theirs) for _, ours, theirs in runs]
    if not pairs:
        return None
    ours_runs = [[ttft for _, _, ttft in ours] for ours, _ in pairs]
    theirs_runs = [[ttft for _, _, ttft in theirs] for _, theirs in pairs]
    ours = statistics.median(t for run in ours_runs for t in run)
    theirs = statistics.median(t for run in theirs_runs for t in run)
    interval = None
    if len(pairs) >= MIN_RUNS:
        ours_strata, theirs_strata = _strata(ours_runs, level), _strata(theirs_runs, level)
        draw = random.Random(SEED)
        ratios = sorted(
            _resampled_median(ours_strata, draw) / _resampled_median(theirs_strata, draw) for _ in range(RESAMPLES)
        )
        interval = [round(ratios[int(0.025 * RESAMPLES)], 4), round(ratios[int(0.975 * RESAMPLES) - 1], 4)]
    pooled = {
        "runs": [len(ours_runs), len(theirs_runs)],
        "requests": [sum(map(len, ours_runs)), sum(map(len, theirs_runs))],
        "ttft_ms_p50": [round(ours, 3), round(theirs, 3)],
        "ratio": round(ours / theirs, 4),
        "interval": interval,
    }
    delays = [[d for run in runs for d, _ in resends(run, level)] for runs in zip(*pairs, strict=True)]
    if all(delays):
        pooled["resend_ms_p50"] = [round(statistics.median(tool), 3) for tool in delays]
    if failed:  # the engine's benchmark's requests that failed: left out of its figures and of this comparison
        pooled["reference_failed"] = failed
    server = [server_figures(folder, {"ttft": own_ttft}).get("ttft") if own_ttft else None for folder, _, _ in runs]
    if any(mean is not None for mean in server):
        pooled["ttft_ms_mean_per_run"] = {
            "ours": [round(statistics.fmean(run), 3) for run in ours_runs],
            "server": [None if mean is None else round(mean, 3) for mean in server],
            "theirs": [round(statistics.fmean(run), 3) for run in theirs_runs],
        }
    return pooled


def own_ttft_figure(engine: str) -> OwnFigure | None:
    """The engine server's own TTFT mean among the figures it counts itself, where it counts one."""
    server = ENGINES[engine].server if engine in ENGINES else None
    return server.own_figures.get("ttft_ms_avg") if server else None


def interval_text(pooled: dict[str, Any], how: str = "") -> str:
    """The pooled ratio's 95 % interval in words (``how`` after it, where there is one), or why there is none."""
    interval = pooled.get("interval")
    return f"95% interval {interval[0]:.2f}-{interval[1]:.2f}{how}" if interval else "one run of each: no interval"


def _strata(runs: list[list[float]], level: int) -> list[list[list[float]]]:
    """The runs' waves in two strata: each run's first wave (the start from idle), and all later ones."""
    cut = [waves(run, level) for run in runs]
    return [stratum for stratum in ([w[0] for w in cut], [x for w in cut for x in w[1:]]) if stratum]


def _resampled_median(strata: list[list[list[float]]], draw: random.Random) -> float:
    """The median over as many waves as each stratum has, drawn with replacement within it."""
    return statistics.median(t for blocks in strata for block in draw.choices(blocks, k=len(blocks)) for t in block)


def level_folder(run_folder: Path, cell_id: str, level: int) -> Path:
    """Where a serving cell's level keeps the load generator's and the engine's benchmark's files."""
    return run_folder / "serving" / cell_id / f"c{level}"


def add_pooled(reference: dict[str, Any], level_folder: Path, level: int, own_ttft: OwnFigure | None = None) -> None:
    """The pooled comparison into a level's reference figures (``pooled_ttft``), or why its files gave none
    (``pooled_error``: a run's files unreadable; the level's other figures stand without it)."""
    try:
        pooled = pooled_ttft(level_folder, level, own_ttft)
    except (OSError, ValueError, KeyError) as exc:
        reference["pooled_error"] = f"{type(exc).__name__}: {exc}"
        return
    if pooled:
        reference["pooled_ttft"] = pooled


def with_pooled(result: dict[str, Any], run_folder: Path) -> dict[str, Any]:
    """A stored serving result with each level's pooled TTFT comparison made again from the level's files in the
    run folder (``--table-only``): the statistic of this runner, also for levels measured before it made one or
    made it another way; a level whose files are not there keeps what was stored."""
    for level in result.get("levels", []):
        reference = level.get("reference")
        if not reference or reference.get("error"):
            continue
        fresh: dict[str, Any] = {}
        where = level_folder(run_folder, result["cell"]["id"], level["level"])
        add_pooled(fresh, where, level["level"], own_ttft_figure(result["cell"].get("engine", "")))
        if "pooled_ttft" in fresh:
            reference.pop("pooled_error", None)
            reference["pooled_ttft"] = fresh["pooled_ttft"]
        elif "pooled_ttft" not in reference and "pooled_error" in fresh:
            reference["pooled_error"] = fresh["pooled_error"]
    return result
