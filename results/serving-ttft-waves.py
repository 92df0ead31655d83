"""Time to first token request by request, in the waves a closed loop sends them: the load generator against
the engine's own serving benchmark, for every level and fidelity run of a serving cell.

At a fixed concurrency with requests of one length, a closed loop sends its requests in waves of the
level's size (each request starts when one ends, and they end together). A wave's TTFT depends on how its
arrivals fall against the server's steps, so one run's median can sit in a gap between waves, and two
tools' medians can differ by more than either's figures suggest. This prints, per level and run, each
wave's TTFT range for AIPerf (its per-request export) and for the engine's benchmark (reference.json's
"requests", written since it was run with --save-detailed), then each tool's median.

    python3 results/serving-ttft-waves.py results/h200/serving/serving/serve-vllm-<id>
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path


def aiperf_requests(folder: Path) -> list[tuple[float, float]]:
    """(sent, TTFT ms) of each measured request in AIPerf's per-request export, by send time."""
    path = folder / "profile_export.jsonl"
    text = path.read_text() if path.exists() else gzip.decompress(path.with_suffix(".jsonl.gz").read_bytes()).decode()
    found = []
    for line in text.splitlines():
        record = json.loads(line)
        meta, metrics = record["metadata"], record["metrics"]
        if meta.get("benchmark_phase") == "profiling" and "time_to_first_token" in metrics:
            found.append((meta["request_start_ns"] / 1e9, metrics["time_to_first_token"]["value"]))
    return sorted(found)


def reference_requests(folder: Path) -> list[tuple[float, float]]:
    """(sent, TTFT ms) of each request the engine's own benchmark sent, where it kept them."""
    path = folder / "reference.json"
    if not path.exists():
        return []
    return sorted((r["sent_s"], r["ttft_ms"]) for r in json.loads(path.read_text()).get("requests", []))


def waves(requests: list[tuple[float, float]], level: int) -> str:
    ttfts = [ttft for _, ttft in requests]
    groups = [ttfts[i : i + level] for i in range(0, len(ttfts), level)]
    return " ".join(f"{min(g):.0f}-{max(g):.0f}" for g in groups[:8]) + (" ..." if len(groups) > 8 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", type=Path, help="a serving cell's folder: serving/<cell id> in the run folder")
    args = parser.parse_args()
    for level_folder in sorted(args.cell.glob("c*"), key=lambda p: int(p.name[1:])):
        level = int(level_folder.name[1:])
        runs = [level_folder, *sorted(level_folder.glob("run*"), key=lambda p: int(p.name[3:]))]
        for number, folder in enumerate(runs, start=1):
            for tool, requests in (("aiperf", aiperf_requests(folder)), ("own", reference_requests(folder))):
                if not requests:
                    continue
                median = statistics.median(t for _, t in requests)
                print(f"c{level} run {number} {tool:6} p50 {median:7.1f} ms  waves (ms): {waves(requests, level)}")


if __name__ == "__main__":
    main()
