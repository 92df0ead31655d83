"""Time to first token request by request, in the waves a closed loop sends them: the load generator against
the engine's own serving benchmark, for every level and fidelity run of a serving cell.

At a fixed concurrency with requests of one length, a closed loop sends its requests in waves of the
level's size (each request starts when one ends, and they end together). A wave's TTFT depends on how its
arrivals fall against the server's steps, so one run's median can sit in a gap between waves, and two
tools' medians can differ by more than either's figures suggest. This prints, per level and run, each
wave's TTFT range for AIPerf (its per-request export) and for the engine's benchmark (reference.json's
"requests", written since it was run with --save-detailed), each tool's median, and per level both
tools' medians over all their runs with the 95 % interval of their ratio (runner.serving.agreement,
what the serving table's Notes give).

    python3 results/serving-ttft-waves.py results/h200/serving/serving/serve-vllm-<id>
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the runner, from the repository root

from runner.serving.agreement import interval_text, loadgen_ttfts, pooled_ttft, reference_ttfts, run_folders, waves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", type=Path, help="a serving cell's folder: serving/<cell id> in the run folder")
    args = parser.parse_args()
    for level_folder in sorted(args.cell.glob("c*"), key=lambda p: int(p.name[1:])):
        level = int(level_folder.name[1:])
        for number, folder in enumerate(run_folders(level_folder), start=1):
            for tool, ttfts in (("aiperf", loadgen_ttfts(folder)), ("own", reference_ttfts(folder))):
                if not ttfts:  # a run cut short, or a benchmark without per-request timings
                    continue
                groups = waves(ttfts, level)
                shown = " ".join(f"{min(g):.0f}-{max(g):.0f}" for g in groups[:8]) + (" ..." if len(groups) > 8 else "")
                print(f"c{level} run {number} {tool:6} p50 {statistics.median(ttfts):7.1f} ms  waves (ms): {shown}")
        pooled = pooled_ttft(level_folder, level)
        if pooled:
            ours, theirs = pooled["ttft_ms_p50"]
            print(
                f"c{level} pooled  aiperf {ours:.1f} ms ({pooled['requests'][0]} requests), own {theirs:.1f} ms "
                f"({pooled['requests'][1]}): {pooled['ratio']:.2f}x, {interval_text(pooled)}"
            )


if __name__ == "__main__":
    main()
