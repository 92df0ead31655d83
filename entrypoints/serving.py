"""The server side of a serving cell: prepare the model, start the engine's server, hold it up, stop it.

A serving cell has two halves. This one runs inside the engine's environment
(its image, or the local interpreter): the engine's server module (serve_<engine>.py)
prepares what the server reads (a converted checkpoint, cached in the store) and
names the server's command line; this harness starts it (in the cell's process
group, so the executor's kill reaches it) on 127.0.0.1, waits until it answers its health path (up to the sweep's
``server_timeout_s``), and says so in ``<output>.ready.json`` (port, command).
The runner then drives the load from outside (runner/serving/) and asks for the
end by creating ``<output>.stop`` (or stops the cell with SIGTERM); the harness
stops the server (SIGINT, then SIGKILL after a grace period) and writes the result: the server's command, how
long it took to become ready, its exit, the last error line of its log, and its
memory over time (device memory through NVML on the cell's GPUs, the process
tree's RSS on CPU), sampled twice a second so the runner can cut a peak per
concurrency level. The server's whole log is kept gzipped in ``<output>.server.log.gz``
(the runner files it with the sweep's artefacts; its last 20 kB also go to the cell's log).

Files and protocol are plain so that both executors work the same: the run
folder is shared with the container. This file imports nothing from the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import harness
from harness import CellInvalid, CellUnsupported, MemorySampler, check_spec, process_tree_rss_mib
from shared import RESULT_SCHEMA_VERSION, write_json_atomic

STOP_GRACE_S = 20
TIMELINE_INTERVAL_S = 0.5


def free_port() -> int:
    """A TCP port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keep_gzipped(path: Path) -> None:
    """Replace the file at path by path.gz (a server's log: per-request timings that the cell's log only tails)."""
    if not path.exists():
        return
    with open(path, "rb") as raw, gzip.open(f"{path}.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    path.unlink()


def last_error_line(log_text: str) -> str | None:
    """The server's own last line that reads as an error, for a row's reason."""
    for line in reversed(log_text.splitlines()):
        lowered = line.lower()
        if any(word in lowered for word in ("error", "exception", "failed", "abort", "out of memory")):
            return line.strip()[:300]
    return None


class Timeline:
    """Memory in use over time: the sum over the cell's GPUs (NVML), or the process tree's RSS on CPU."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._read = self._cpu
        self._handles: list[Any] = []
        if os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
            try:
                import pynvml

                pynvml.nvmlInit()  # the cell's GPUs only (NVML itself sees every GPU of the host)
                self._handles = [harness._nvml_handle(pynvml, entry) for entry in harness._visible_devices()]
                self._nvml = pynvml
                self._read = self._gpu
            except Exception:  # no NVML: the overall sampler says why
                self._read = lambda: None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cpu(self) -> float:
        return process_tree_rss_mib(os.getpid())

    def _gpu(self) -> float:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in self._handles)

    def _run(self) -> None:
        while True:
            value = self._read()
            if value is not None:
                self.samples.append((round(time.time(), 2), round(value, 1)))
            if self._stop.wait(TIMELINE_INTERVAL_S):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until GET url answered 200; raises if the server exits first or the time runs out."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError),
            urllib.request.urlopen(url, timeout=2) as answer,
        ):
            if answer.status == 200:
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the server did not answer {url} within {timeout_s:.0f} s (server_timeout_s)")
        time.sleep(0.25)


class Stopped(Exception):
    """The executor stopped the cell (its timeout, or the run was interrupted): SIGTERM."""


def _stopped(signum: int, frame: Any) -> None:
    raise Stopped("stopped by SIGTERM (the cell's timeout, or the run was interrupted)")


def stop_server(process: subprocess.Popen) -> int | None:
    """SIGINT to the server (servers shut down cleanly on it), SIGKILL after a grace period. The server
    stays in this process's group, so whatever it leaves behind goes with the cell's group (the executor
    kills it whole) or its container."""
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    return process.returncode


def serve(server_class: type, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the server of one serving cell until the runner stops it.")
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    ready_path = Path(f"{args.output}.ready.json")
    stop_path = Path(f"{args.output}.stop")
    result: dict[str, Any] = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": spec["cell"],
        "model": spec["model"],
        "workload": spec["workload"],
        "status": "ok",
        "reason": None,
        "metrics": {},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    signal.signal(signal.SIGTERM, _stopped)  # a stopped cell still stops its server and writes its result
    sampler, timeline = MemorySampler(interval_s=0.05), Timeline()
    process = None
    server_log = args.output.with_name(args.output.name + ".server.log")
    try:
        check_spec(spec)
        server = server_class(spec)
        result["prepare"] = server.prepare()
        port = free_port()
        command = server.command(port)
        result["server"] = {"command": command, "port": port, "versions": server.versions()}
        print("$ " + " ".join(command), flush=True)
        sampler.start()
        timeline.start()
        with open(server_log, "w") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        ready_s = wait_until_ready(
            f"http://127.0.0.1:{port}{server.health_path}", process, spec["workload"]["server_timeout_s"]
        )
        result["server"]["ready_s"] = round(ready_s, 2)
        served = getattr(server, "served_model", None) or spec["model"]["name"]  # what requests name as model
        write_json_atomic(ready_path, {"port": port, "command": command, "pid": process.pid, "model": served})
        print(f"server ready on port {port} after {ready_s:.1f} s", flush=True)
        while not stop_path.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode} while it served")
            time.sleep(0.2)
    except CellUnsupported as exc:  # this environment cannot run the engine: said, not failed
        result["status"], result["reason"] = "unsupported", str(exc)
    except CellInvalid as exc:
        result["status"], result["reason"] = "failed", str(exc)
    except Exception as exc:
        result["status"] = "failed"
        result["reason"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    finally:
        if process is not None:
            result.setdefault("server", {})["exit_code"] = stop_server(process)
        result["memory"] = sampler.stop()
        result["memory_timeline"] = timeline.stop() if timeline._thread.is_alive() else []
        log_text = server_log.read_text(errors="replace") if server_log.exists() else ""
        sys.stdout.write(log_text[-20000:])  # the server's own output goes to the cell's log
        if result["status"] == "failed":
            cause = last_error_line(log_text)
            if cause and cause not in result["reason"]:
                result["reason"] += f"; server said: {cause}"
        keep_gzipped(server_log)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(args.output, result)
    print(f"[{spec['cell']['id']}] server {result['status']}: {result['reason'] or 'stopped'}", flush=True)
    return 0 if result["status"] == "ok" else 1
