"""A real two-node Ray cluster on this machine for the ray executor's tests (CPU only, no mocks).

A head (custom resource node_a) and a second node (node_b), one CPU each; node_b also
declares one GPU of the card kind TESTCARD (resource accelerator_type:TESTCARD), as Ray
declares a GPU node's card kind, so that cells for a card are placed there. The machine
has no GPU: such a cell reaches node_b and fails or is not run there, with its node named.
Fixtures in conftest.py start it (``ray_cluster``); the process helpers check what is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE = str(100 * 1024 * 1024)
TEST_CARD = "TESTCARD"
# the head notices a dead node within seconds (Ray's default health check waits about half a minute)
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAST_HEALTH_CHECK}
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _argvs() -> Iterator[tuple[int, list[bytes]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")


def ray_processes() -> list[str]:
    """Command lines of live Ray processes on this machine (raylet, GCS, workers: ray::...)."""
    found = []
    for _, argv in _argvs():
        line = b" ".join(argv).decode(errors="replace").strip()
        if line.startswith("ray::") or any(name in line for name in ("/raylet ", "gcs_server", "default_worker.py")):
            found.append(line[:200])
    return found


def engine_processes() -> list[int]:
    """Pids of cell engines started by a node (their spec lies in a node's scratch run folder)."""
    return [pid for pid, argv in _argvs() if b"--spec" in argv and any(b"/inference-matrix-ray-" in a for a in argv)]


def raylet_of(resource: str) -> int:
    """The pid of the raylet of the node started with this custom resource."""
    for pid, argv in _argvs():
        listed = [a for a in argv if a.startswith(b"--static_resource_list=")]
        if argv[0].endswith(b"/raylet") and listed and f"{resource},".encode() in listed[0]:
            return pid
    raise AssertionError(f"no raylet with the resource {resource}")


def _node_flags(cpus: int) -> list[str]:
    """What every node of these clusters is started with: its CPUs, no usage reports, a small object store."""
    return [f"--num-cpus={cpus}", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE}"]


def join(address: str, name: str, card: str, cpus: int = 0) -> None:
    """Another node joins the running cluster, with one GPU of card kind `card`, `cpus` CPUs and the resource
    `name`; stopped with the cluster."""
    resources = f'{{"{name}": 1, "accelerator_type:{card}": 1}}'
    _ray("start", f"--address={address}", "--num-gpus=1", "--resources", resources, *_node_flags(cpus))


@contextlib.contextmanager
def runner_process(repo: Path, out: Path, err: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`python -m runner ARGS` in its own session (RAY_ADDRESS dropped: tests name the address), SIGINT at its
    default as in a terminal, output to out and err; killed with its group should a check fail while it runs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        runner = subprocess.Popen(
            [sys.executable, "-m", "runner", *args], cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        yield runner
    finally:
        if runner.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)


def wait_for(condition, runner: subprocess.Popen, what: str, output: Path | None = None, deadline_s: float = 300):
    """Poll condition() until it returns something truthy; fail if the runner exits first (or after deadline_s)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False and value != []:
            return value
        if runner.poll() is not None:
            said = output.read_text() if output else "".join(runner.communicate())
            pytest.fail(f"runner exited ({runner.returncode}) before {what}:\n{said[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")


@contextlib.contextmanager
def two_nodes() -> Iterator[str]:
    """The cluster's address while it runs; stopped afterwards, and checked gone with every cell engine."""
    assert not ray_processes(), "a Ray cluster is already running on this machine"
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    common = _node_flags(1)
    try:
        _ray(
            "start", "--head", f"--port={port}", "--num-gpus=0", "--resources", '{"node_a": 1}',
            "--include-dashboard=false", f"--temp-dir={temp}", *common,
        )  # fmt: skip
        card = f'"accelerator_type:{TEST_CARD}": 1'
        _ray("start", f"--address=127.0.0.1:{port}", "--num-gpus=1", "--resources", f'{{"node_b": 1, {card}}}', *common)
        assert ray_processes()  # what the teardown checks for is seen
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
        shutil.rmtree(temp, ignore_errors=True)
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), ray_processes()
    assert not engine_processes()
