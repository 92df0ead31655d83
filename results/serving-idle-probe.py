"""Does a server's time to first token depend on how long it sat idle before the request? One client, one
request at a time, each sent a chosen wait after the previous one ended.

At concurrency 1 the two load generators of the serving cells differ in one thing the server can see: how
soon the next request follows a completion (`vllm bench serve` 0.2 ms, AIPerf 2-4 ms; results/README.md,
results/h100/serving-long). On vLLM fp8 AIPerf's TTFT came out 9 ms higher at concurrency 1 on the long
workload, and AIPerf's TTFT grew with its own send delay. This client takes every other difference away:
the same prompts (token ids, each request its own random ones, so the prefix cache never hits), the same
body, one kept-alive connection, and only the wait after a completion varies, in shuffled order.

    python3 results/serving-idle-probe.py --out runs/idle --delays-ms 0,4,12,50 --requests 24 \
        --server "fp8=python3 -m vllm.entrypoints.openai.api_server --model M --quantization fp8 --port 8000" \
        --server "bf16=python3 -m vllm.entrypoints.openai.api_server --model M --port 8000"
    python3 results/serving-idle-probe.py --out runs/idle --url http://127.0.0.1:8000   # a running server

Each --server NAME=COMMAND is started in turn (its own process group, log in OUT/NAME/server.log), waited
for (/health), probed and stopped. Per request it keeps when it was sent, its first streamed chunk with a
choice (as `vllm bench serve` counts TTFT), its first chunk with text (as AIPerf does) and its end; it
prints, per wait, the median TTFT and E2E with their ratio to the first wait's (95 % bootstrap interval),
and writes OUT/NAME/idle-probe.json (every request and the summary; OUT/idle-probe.json for a running server).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))  # the serving cells' server helpers

from serving import stop_server, wait_until_ready

RESAMPLES = 2000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results (and the servers' logs)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (each --server must listen there)")
    parser.add_argument("--server", action="append", default=[], metavar="NAME=COMMAND",
                        help="a server to start, probe and stop (repeat for several, probed in turn)")  # fmt: skip
    parser.add_argument("--delays-ms", default="0,4,12,50", help="waits after a completion, comma-separated")
    parser.add_argument("--requests", type=int, default=24, help="measured requests per wait")
    parser.add_argument("--warmup", type=int, default=4, help="requests sent first and not kept")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--token-range", default="1000,30000", help="prompt token ids are drawn from [low, high)")
    parser.add_argument("--ready-timeout-s", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loadgen", help="unused: results/device-run.sh passes it to whatever it runs")
    args = parser.parse_args(argv)
    try:
        args.delays = [float(d) for d in args.delays_ms.split(",")]
        args.low, args.high = (int(t) for t in args.token_range.split(","))
    except ValueError:
        parser.error("--delays-ms takes numbers (0,4,12); --token-range two integers (1000,30000)")
    if args.requests < 2 or args.prompt_tokens < 1 or args.new_tokens < 2 or not args.low < args.high:
        parser.error("give at least 2 requests, a prompt token, 2 new tokens and a token range low < high")
    args.servers = []
    for given in args.server:
        name, _, command = given.partition("=")
        if not name or not command.strip() or "/" in name:
            parser.error(f"--server {given!r}: give NAME=COMMAND (a name without /, then the server's command)")
        args.servers.append((name, shlex.split(command)))
    return args


class Client:
    """One kept-alive HTTP connection to the server; each request streamed and timed chunk by chunk."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        self.model = json.loads(self.get("/v1/models"))["data"][0]["id"]

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
        return body

    def body(self, prompt: list[int], new_tokens: int) -> bytes:
        """A request's body, made before its wait begins (so a wait of 0 is not the time to make it)."""
        return json.dumps(
            {
                "model": self.model,
                "prompt": prompt,
                "max_tokens": new_tokens,
                "min_tokens": new_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()

    def complete(self, payload: bytes) -> dict[str, float | int]:
        sent = time.perf_counter()
        self.connection.request("POST", "/v1/completions", payload, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"POST /v1/completions: HTTP {response.status}: {response.read()[:300]!r}")
        first_chunk = first_text = None
        chunks = tokens = 0
        while line := response.readline():
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            if choices := data.get("choices"):
                now = time.perf_counter()
                chunks += 1
                first_chunk = first_chunk or now
                if choices[0].get("text"):
                    first_text = first_text or now
            if data.get("usage"):
                tokens = data["usage"].get("completion_tokens", 0)
        ended = time.perf_counter()
        if first_chunk is None:
            raise RuntimeError("the stream ended without a choice")
        return {
            "sent": sent,
            "ttft_ms": (first_chunk - sent) * 1e3,
            "ttft_text_ms": ((first_text or ended) - sent) * 1e3,
            "e2e_ms": (ended - sent) * 1e3,
            "ended": ended,
            "chunks": chunks,
            "completion_tokens": tokens,
        }


def probe(client: Client, args: argparse.Namespace) -> list[dict]:
    rng = random.Random(args.seed)
    order = [d for _ in range(args.requests) for d in args.delays]
    for start in range(0, len(order), len(args.delays)):  # each round has every wait once, in its own order
        block = order[start : start + len(args.delays)]
        rng.shuffle(block)
        order[start : start + len(args.delays)] = block
    records: list[dict] = []
    previous = None  # when the last request ended
    delays = [args.delays[0]] * args.warmup + order
    prompts = [[rng.randrange(args.low, args.high) for _ in range(args.prompt_tokens)] for _ in delays]
    payloads = [client.body(prompt, args.new_tokens) for prompt in prompts]
    for number, (delay, payload) in enumerate(zip(delays, payloads, strict=True)):
        if previous is not None:
            wait_until(previous + delay / 1e3)
        record = client.complete(payload)
        if number >= args.warmup:
            waited = None if previous is None else round((record["sent"] - previous) * 1e3, 3)
            records.append({"delay_ms": delay, "waited_ms": waited, **record})
        previous = record["ended"]
    return records


def wait_until(target: float) -> None:
    """Sleep to within a millisecond of target (perf_counter), then spin: a wait accurate to microseconds."""
    while (left := target - time.perf_counter()) > 0.002:
        time.sleep(left - 0.001)
    while time.perf_counter() < target:
        pass


def interval(first: list[float], other: list[float], rng: random.Random) -> list[float]:
    """95 % bootstrap interval of median(other) / median(first)."""
    ratios = sorted(
        statistics.median(rng.choices(other, k=len(other))) / statistics.median(rng.choices(first, k=len(first)))
        for _ in range(RESAMPLES)
    )
    return [round(ratios[int(0.025 * RESAMPLES)], 3), round(ratios[int(0.975 * RESAMPLES) - 1], 3)]


def summarise(records: list[dict], delays: list[float]) -> list[dict]:
    rng = random.Random(1)
    by_delay = {d: [r for r in records if r["delay_ms"] == d] for d in delays}
    base = by_delay[delays[0]]
    rows = []
    for delay, group in by_delay.items():
        row = {"delay_ms": delay, "requests": len(group)}
        for key in ("ttft_ms", "ttft_text_ms", "e2e_ms"):
            values = [r[key] for r in group]
            row[key] = round(statistics.median(values), 3)
            row[f"{key}_ratio"] = round(row[key] / statistics.median(r[key] for r in base), 4)
            row[f"{key}_interval"] = interval([r[key] for r in base], values, rng)
        waited = [r["waited_ms"] for r in group if r["waited_ms"] is not None]
        row["waited_ms"] = round(statistics.median(waited), 3) if waited else None
        row["completion_tokens"] = sorted({r["completion_tokens"] for r in group})
        rows.append(row)
    return rows


def start_server(command: list[str], out: Path, url: str, timeout_s: float) -> subprocess.Popen:
    """The server started in its own process group and answering /health (the serving cells' own wait)."""
    with open(out / "server.log", "w") as log:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)  # fmt: skip
    try:
        wait_until_ready(url.rstrip("/") + "/health", server, timeout_s)
    except RuntimeError:
        raise RuntimeError(
            f"the server exited ({server.returncode}) before it was ready: see {out / 'server.log'}"
        ) from None
    except TimeoutError:
        stop(server)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s: see {out / 'server.log'}") from None
    return server


def stop(server: subprocess.Popen) -> None:
    """The serving cells' stop (SIGINT, SIGKILL after a grace), then whatever it left in its group."""
    stop_server(server)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


def probe_server(args: argparse.Namespace, out: Path, command: list[str]) -> int:
    """Start the server (if a command is given), probe it, stop it; write out/idle-probe.json and print the
    summary."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        server = start_server(command, out, args.url, args.ready_timeout_s) if command else None
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        started = time.monotonic()
        records = probe(Client(args.url), args)
        took = time.monotonic() - started
    finally:
        if server is not None:
            stop(server)
    rows = summarise(records, args.delays)
    result = {
        "command": command,
        "url": args.url,
        "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "delays", "low", "high", "servers")},
        "took_s": round(took, 1),
        "summary": rows,
        "requests": records,
    }
    (out / "idle-probe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{out}: {len(records)} requests in {took:.1f} s, {args.prompt_tokens} prompt tokens, {args.new_tokens} new")
    print("wait (ms) | waited p50 | TTFT p50 (ms, ratio, 95% interval) | first text p50 | E2E p50 | tokens")
    for row in rows:
        low, high = row["ttft_ms_interval"]
        print(
            f"{row['delay_ms']:9g} | {row['waited_ms'] or 0:10.2f} | {row['ttft_ms']:8.2f} {row['ttft_ms_ratio']:.3f} "
            f"({low:.3f}-{high:.3f}) | {row['ttft_text_ms']:8.2f} | {row['e2e_ms']:8.1f} | {row['completion_tokens']}"
        )
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.servers:
        return probe_server(args, args.out, [])
    codes = [probe_server(args, args.out / name, command) for name, command in args.servers]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
