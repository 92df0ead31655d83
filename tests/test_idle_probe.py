"""results/serving-idle-probe.py against the reference server of known timing (results/loadgen-overhead): it
starts the server from its command, waits the chosen time after each completion, times each request's first
chunk and end, and stops the server; a server that dies before it is ready is named with its log."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from two_node_ray import free_port

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "results" / "serving-idle-probe.py"
SERVER = REPO / "results" / "loadgen-overhead" / "reference_server.py"


def test_waits_and_first_tokens_are_measured_and_the_server_is_stopped(tmp_path):
    port = free_port()
    server = [sys.executable, str(SERVER), "--port", str(port), "--ttft-ms", "15", "--itl-ms", "5"]
    args = ["--out", str(tmp_path), "--url", f"http://127.0.0.1:{port}", "--delays-ms", "0,10", "--requests", "5",
            "--warmup", "2", "--prompt-tokens", "32", "--new-tokens", "3"]  # fmt: skip
    done = subprocess.run([sys.executable, str(PROBE), *args, "--server", "ref=" + shlex.join(server)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "ref" / "idle-probe.json").read_text())
    requests = result["requests"]
    assert [r["delay_ms"] for r in requests].count(0.0) == 5 and len(requests) == 10
    for request in requests:
        assert request["completion_tokens"] == 3 and request["chunks"] == 3
        assert abs(request["waited_ms"] - request["delay_ms"]) < 1.0, request  # the wait asked for, to 1 ms
        assert 15 <= request["ttft_ms"] < request["e2e_ms"]  # the server sends its first token 15 ms in
        assert request["ttft_text_ms"] == request["ttft_ms"]  # every chunk has text
    assert [row["delay_ms"] for row in result["summary"]] == [0.0, 10.0]
    assert result["summary"][0]["ttft_ms_ratio"] == 1.0
    assert 15 <= result["summary"][1]["ttft_ms"] < 30  # the server's timing does not depend on the wait
    assert "wait (ms) | waited p50 | TTFT p50" in done.stdout
    assert (tmp_path / "ref" / "server.log").is_file()
    left = subprocess.run(["pgrep", "-f", f"reference_server.py --port {port}"], capture_output=True, text=True)
    assert left.stdout == ""


def test_a_server_that_exits_before_it_is_ready_is_named_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    done = subprocess.run([sys.executable, str(PROBE), "--out", str(tmp_path), "--url", "http://127.0.0.1:9",
                           "--server", "gone=" + shlex.join(command), "--loadgen", "/tmp/aiperf"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the server exited (3) before it was ready: see {tmp_path / 'gone' / 'server.log'}"
    )
    assert (tmp_path / "gone" / "server.log").read_text() == "no model here\n"
    bad = subprocess.run([sys.executable, str(PROBE), "--out", str(tmp_path), "--server", "python3 -m x"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2
    assert "--server 'python3 -m x': give NAME=COMMAND" in bad.stderr
