"""What a load generator adds to what it measures: AIPerf and vllm bench serve against a server of known timing.

Issue 22 asks to pick the serving cells' load generator by its overhead at the highest
concurrency swept. A GPU server's own timing is unknown, so a gap between two tools there
cannot be told apart from the server's variation. reference_server.py has a known one
(first token TTFT_MS after it got the request, then one every ITL_MS, regardless of load) and
records when it received each request and sent its first and last token. Each tool runs
each level as the serving cells run it (runner/serving/loadgen.py's AIPerf arguments; the
vLLM engine's own `vllm bench serve` arguments, in the vLLM CPU image on the host's
network), and its figures are set against the server's record of the same requests: what
is left is the client's own time (and loopback's).

    .venv/bin/python results/loadgen-overhead/probe.py --out results/loadgen-overhead/cpu-2core \\
        --vllm-image inference-matrix/vllm:cpu-<tag> [--repeats 2]
    python3 results/loadgen-overhead/probe.py --out DIR --bench-python python3   # no Docker: vLLM importable

On the GPU host (no Docker there), in the environment results/device-run.sh makes (vLLM's carried site,
AIPerf's wrapper), with lengths drawn per request as matrix-serving-ranged.yaml draws them:

    DEVICE_SCRIPT=results/loadgen-overhead/probe.py bash results/device-background.sh start runs/probe 900 40 \
        --bench-python python3 --range-ratio 0.25 --architecture shisa-7b-v1

With --guidellm PATH (a venv's guidellm, e.g. `pip install guidellm==0.8.1`), GuideLLM runs each level too, as
the third tool: its concurrent profile, the same lengths and request count, ignore_eos in the request body; no
warm-up (GuideLLM's warm-up is a share of the run whose requests it drops by when they finished, not a count
of requests before), so its rows are set against every request the server got.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from runner.engines.vllm import bench_serve_arguments  # noqa: E402
from runner.models import synthetic  # noqa: E402
from runner.serving.loadgen import aiperf_arguments, find_aiperf, level_metrics, level_requests, level_seed  # noqa: E402

# as matrix-serving.yaml
SWEEP = {"prompt_tokens": 64, "new_tokens": 256, "requests": 16, "rounds": 4, "warmup_requests": 4}
MODEL = "reference"


def get(url: str, method: str = "GET") -> object:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def truth(records: list[dict[str, float]], warmups: int) -> dict[str, float]:
    """The server's own figures for the measured requests (the first `warmups` to arrive were the warm-up)."""
    measured = sorted(records, key=lambda r: r["arrived"])[warmups:]
    ttfts = [1000 * (r["first"] - r["arrived"]) for r in measured]
    itls = [1000 * (r["last"] - r["first"]) / (r["tokens"] - 1) for r in measured if r["tokens"] > 1]
    span = max(r["last"] for r in measured) - min(r["arrived"] for r in measured)
    return {
        "requests": len(measured),
        "ttft_ms_p50": statistics.median(ttfts),
        "ttft_ms_p99": sorted(ttfts)[max(0, round(0.99 * len(ttfts)) - 1)],
        "itl_ms_mean": statistics.fmean(itls),
        "output_tokens_per_s": sum(r["tokens"] for r in measured) / span,
    }


def run_aiperf(aiperf: str, url: str, tokenizer: str, level: int, folder: Path) -> dict[str, float]:
    artifacts = folder / f"aiperf-c{level}"
    command = [aiperf, *aiperf_arguments(url, MODEL, tokenizer, level, SWEEP, {"ignore_eos": True}, artifacts)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    (folder / f"aiperf-c{level}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"aiperf at {level}: exit {done.returncode}: {done.stderr[-500:]}")
    got = level_metrics(artifacts)
    return {"ttft_ms_p50": got["ttft_ms_p50"], "ttft_ms_p99": got["ttft_ms_p99"], "itl_ms_mean": got["itl_ms_avg"],
            "output_tokens_per_s": got["output_tokens_per_s"]}  # fmt: skip


def run_guidellm(guidellm: str, url: str, tokenizer: str, level: int, folder: Path) -> dict[str, float]:
    """GuideLLM at one level: its concurrent profile, the same lengths and request count, no warm-up of its own
    (its warm-up is a share of the run whose requests it drops by when they finished; the server needs none)."""
    result = folder / f"guidellm-c{level}.json"
    backend = {"kind": "openai_http", "target": url, "model": tokenizer, "request_format": "/v1/completions",
               "extras": {"body": {"ignore_eos": True}}}  # fmt: skip
    command = [
        guidellm, "run", "--backend", json.dumps(backend), "--profile", f"kind=concurrent,streams={level}",
        "--constraint", f"kind=max_requests,count={level_requests(SWEEP, level)}",
        "--data", f"kind=synthetic_text,prompt_tokens={SWEEP['prompt_tokens']},output_tokens={SWEEP['new_tokens']}",
        "--output", f"kind=json,path={result}", "--disable-console",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    (folder / f"guidellm-c{level}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"guidellm at {level}: exit {done.returncode}: {done.stderr[-500:]}")
    metrics = json.loads(result.read_text())["benchmarks"][0]["metrics"]
    return {"ttft_ms_p50": metrics["time_to_first_token_ms"]["successful"]["median"],
            "ttft_ms_p99": metrics["time_to_first_token_ms"]["successful"]["percentiles"]["p99"],
            "itl_ms_mean": metrics["inter_token_latency_ms"]["successful"]["mean"],
            "output_tokens_per_s": metrics["output_tokens_per_second"]["successful"]["mean"]}  # fmt: skip


def run_bench(image: str | None, python: str | None, url: str, tokenizer: str, level: int, folder: Path):
    """vllm bench serve at one level: in the vLLM image (docker, host network), or by a Python with vLLM."""
    result = folder / f"bench-c{level}.json"
    if python:  # a host without Docker (the lent GPU machine): the entrypoint under that interpreter
        arguments = bench_serve_arguments(url, MODEL, tokenizer, level, SWEEP, str(result.resolve()), level_seed(level))
        command = [python, str(REPO / "entrypoints" / "vllm_bench_serve.py"), *arguments]
    else:
        arguments = bench_serve_arguments(url, MODEL, tokenizer, level, SWEEP, f"/out/{result.name}", level_seed(level))
        command = [
            "docker", "run", "--rm", "--network", "host", "-v", f"{tokenizer}:{tokenizer}:ro",
            "-v", f"{folder.resolve()}:/out", image, "python3", "vllm_bench_serve.py", *arguments,
        ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    (folder / f"bench-c{level}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"vllm bench serve at {level}: exit {done.returncode}: {done.stderr[-500:]}")
    got = json.loads(result.read_text())
    return {"ttft_ms_p50": got["median_ttft_ms"], "ttft_ms_p99": got["p99_ttft_ms"], "itl_ms_mean": got["mean_itl_ms"],
            "output_tokens_per_s": got["output_throughput"]}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = (
        "| Tool | Round | Concurrency | TTFT p50: server | tool | added | ITL mean: server | tool | "
        "Output tok/s: server | tool | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        s, t = r["server"], r["tool"]
        lines.append(
            f"| {r['tool_name']} | {r['round']} | {r['level']} | {s['ttft_ms_p50']:.2f} ms | {t['ttft_ms_p50']:.2f} ms "
            f"| {t['ttft_ms_p50'] - s['ttft_ms_p50']:+.2f} ms | {s['itl_ms_mean']:.2f} ms | {t['itl_ms_mean']:.2f} ms "
            f"| {s['output_tokens_per_s']:.0f} | {t['output_tokens_per_s']:.0f} "
            f"| {t['output_tokens_per_s'] / s['output_tokens_per_s']:.3f} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    bench = parser.add_mutually_exclusive_group(required=True)
    bench.add_argument("--vllm-image", help="the vLLM image whose vllm bench serve runs (docker, host network)")
    bench.add_argument("--bench-python", help="or a Python that imports vLLM (a host without Docker)")
    parser.add_argument("--store", type=Path, default=REPO / ".cache" / "store")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ttft-ms", type=float, default=15.0)
    parser.add_argument("--itl-ms", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--guidellm", help="a guidellm executable: GuideLLM too, as a third tool (no warm-up)")
    parser.add_argument("--loadgen", help="the aiperf executable (default: as the runner finds it)")
    parser.add_argument("--range-ratio", type=float, default=0.0,
                        help="lengths drawn per request within this share of 64 / 256, in both tools (serving's "
                             "length_range_ratio; 0: every request the same)")  # fmt: skip
    parser.add_argument("--architecture", default="tiny-mistral",
                        help="the synthetic checkpoint whose tokenizer makes the prompts (shisa-7b-v1: the GPU "
                             "matrices'; its weights are materialised too)")  # fmt: skip
    args = parser.parse_args()
    if args.range_ratio and args.guidellm:
        parser.error("--range-ratio: GuideLLM's run here sends fixed lengths; leave one of the two out")
    SWEEP["length_range_ratio"] = args.range_ratio
    levels = [int(v) for v in args.levels.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = str(synthetic.materialise(args.architecture, args.store, log=lambda line: None).resolve())
    aiperf = find_aiperf(args.loadgen)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("reference_server.py")), "--port", str(args.port),
         "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--model", MODEL],
    )  # fmt: skip
    rows = []
    try:
        for _ in range(100):
            try:
                get(f"{url}/v1/models")
                break
            except OSError:
                time.sleep(0.1)
        for round_ in range(1, args.repeats + 1):
            tools = (
                ("AIPerf", lambda lv, f: run_aiperf(aiperf, url, tokenizer, lv, f)),
                (
                    "vllm bench serve",
                    lambda lv, f: run_bench(args.vllm_image, args.bench_python, url, tokenizer, lv, f),
                ),
            )
            if args.guidellm:
                tools += (("GuideLLM", lambda lv, f: run_guidellm(args.guidellm, url, tokenizer, lv, f)),)
            for name, run in tools:
                folder = (
                    args.out
                    / "raw"
                    / f"round-{round_}"
                    / {"AIPerf": "aiperf", "GuideLLM": "guidellm"}.get(name, "bench")
                )
                folder.mkdir(parents=True, exist_ok=True)
                for level in levels:
                    get(f"{url}/reset", "POST")
                    tool = run(level, folder)
                    records = get(f"{url}/records")
                    (folder / f"server-c{level}.json").write_text(json.dumps(records))
                    warmups = 0 if name == "GuideLLM" else SWEEP["warmup_requests"]
                    row = {"tool_name": name, "round": round_, "level": level,
                           "server": truth(records, warmups), "tool": tool}  # fmt: skip
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    versions = subprocess.run([aiperf, "--version"], capture_output=True, text=True).stdout.strip()
    facts = {
        "server": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms, "model": MODEL},
        "sweep": SWEEP,
        "tokenizer": args.architecture,
        "levels": levels,
        "aiperf": versions or "aiperf 0.13.0",
        "vllm_image": args.vllm_image,
        "bench_python": args.bench_python,
        "guidellm": subprocess.run([args.guidellm, "--version"], capture_output=True, text=True).stdout.strip()
        if args.guidellm
        else None,
        "cpu": f"{os.cpu_count()} CPUs",
        "rows": rows,
    }
    (args.out / "overhead.json").write_text(json.dumps(facts, indent=2) + "\n")
    (args.out / "overhead.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
