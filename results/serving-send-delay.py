"""How soon each load generator sends a closed loop's next request after one ends, and what that does to TTFT.

At a fixed concurrency a closed loop sends a request when one of its requests has ended. The engine's own
benchmark (`vllm bench serve`: one asyncio loop) sends it within a fraction of a millisecond; AIPerf
passes the freed slot from the request's worker to its timing manager and back to a worker (separate
processes), so its next request leaves some milliseconds later. A request ends at the end of one of the
server's steps, so the two tools' requests arrive at different points of the step then running: one sent
at once either makes the next step or waits a whole one more; one sent a few milliseconds later waits for
what is left of it. That shapes the TTFT of the requests that follow a completion (runner.serving.agreement
gives the pooled figures the serving table shows); it is the load, not the client's measurement.

This prints, per level and fidelity run of a serving cell: each tool's delay from the last completion
before a send to the send (median, 10th-90th percentile; for AIPerf also its two legs, completion to its
credit and credit to send) with those requests' median TTFT; then, pooled over the runs both tools
finished, the server's median inter-token latency (AIPerf's: about one step), each tool's median gap from a
request's first streamed chunk to its second (AIPerf's time_to_second_token; the benchmark's where its run
kept it), and each tool's TTFT of those requests by quantile (a split into modes shows as a jump) and by
send delay.

    python3 results/serving-send-delay.py results/h100/serving-ranged/serving/serve-vllm-cc9f2d80dfa0

Each run's first wave (its first sends, as many as the level, at once, to a server with nothing running)
is left out, and so are requests with no completion in the 50 ms before their send.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the runner, from the repository root

from runner.raw_archive import unpack_for
from runner.serving.agreement import (
    FOLLOWS_MS,
    loadgen_requests,
    reference_records,
    reference_requests,
    resends,
    run_folders,
)
from runner.serving.loadgen import profiling_records

BIN_MS = 1.5
QUANTILES = (0.25, 0.5, 2 / 3, 0.75, 0.9)


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    deciles = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.2f} ({deciles[0]:.2f}-{deciles[-1]:.2f})"


def credit_legs(records: list[dict], level: int) -> tuple[list[float], list[float]]:
    """AIPerf's resend in two legs (ms), for its sends after the first wave that followed a completion (as
    agreement.resends times them): last completion to the credit its timing manager issued, and credit to send."""
    records = sorted(records, key=lambda r: r["metadata"]["request_start_ns"])
    ends = sorted(r["metadata"]["request_end_ns"] for r in records)
    to_credit, to_send = [], []
    for record in records[level:]:
        sent, credit = record["metadata"]["request_start_ns"], record["metadata"]["credit_issued_ns"]
        before = bisect.bisect_right(ends, sent)
        if before and sent - ends[before - 1] <= FOLLOWS_MS * 1e6:
            to_credit.append((credit - ends[before - 1]) / 1e6)
            to_send.append((sent - credit) / 1e6)
    return to_credit, to_send


def metric_values(records: list[dict], tag: str) -> list[float]:
    """One of AIPerf's per-request metrics (ms) over its records, where recorded."""
    return [r["metrics"][tag]["value"] for r in records if tag in r.get("metrics", {})]


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    return " ".join(f"{q:.2f}: {ordered[min(int(q * len(ordered)), len(ordered) - 1)]:.1f}" for q in QUANTILES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", type=Path, help="a serving cell's folder: serving/<cell id> in the run folder")
    args = parser.parse_args()
    for level_folder in sorted(unpack_for(args.cell).glob("c*"), key=lambda p: int(p.name[1:])):
        level = int(level_folder.name[1:])
        pooled: dict[str, list[tuple[float, float]]] = {"aiperf": [], "own": []}
        itls = []
        second: dict[str, list[float]] = {"aiperf": [], "own": []}  # first-to-second chunk gap, ms
        for number, folder in enumerate(run_folders(level_folder), start=1):
            records = profiling_records(folder)  # AIPerf's measured requests, read once per run
            runs = {
                "aiperf": resends(loadgen_requests(folder), level),
                "own": resends(reference_requests(folder), level),
            }
            for tool, found in runs.items():
                if not found:
                    continue
                line = f"c{level} run {number} {tool:6} sends {spread([d for d, _ in found])} ms after a completion"
                if tool == "aiperf":
                    to_credit, to_send = credit_legs(records, level)
                    line += f" (to credit {spread(to_credit)}, credit to send {spread(to_send)})"
                print(f"{line}; TTFT p50 {statistics.median(t for _, t in found):.1f} ms over {len(found)}")
            if all(runs.values()):  # a run both tools finished
                for tool, found in runs.items():
                    pooled[tool] += found
                itls += metric_values(records, "inter_token_latency")
                second["aiperf"] += metric_values(records, "time_to_second_token")
                second["own"] += [
                    r["second_token_ms"] for r in reference_records(folder) if r.get("second_token_ms") is not None
                ]
        if not all(pooled.values()):
            continue
        step = f"; ITL p50 {statistics.median(itls):.2f} ms" if itls else ""
        print(f"c{level} pooled over the runs both tools finished{step}:")
        if any(second.values()):  # a first chunk held back until the second shows as a gap well under the ITL
            gaps = ", ".join(f"{tool} {statistics.median(v):.2f} ms" for tool, v in second.items() if v)
            print(f"  first to second chunk, p50: {gaps}")
        for tool, found in pooled.items():
            bins: dict[int, list[float]] = {}
            for delay, ttft in found:
                bins.setdefault(int(delay // BIN_MS), []).append(ttft)
            shown = "  ".join(
                f"{b * BIN_MS:.1f}-{(b + 1) * BIN_MS:.1f}: {statistics.median(t):.1f} ({len(t)})"
                for b, t in sorted(bins.items())
                if len(t) >= 3
            )
            print(f"  {tool:6} {len(found)} requests, TTFT (ms) at quantiles {quantiles([t for _, t in found])}")
            print(f"  {'':6} by send delay (ms), TTFT p50 (n): {shown}")


if __name__ == "__main__":
    main()
