"""The ray executor on a real two-node Ray cluster started on this machine (CPU only), no mocks.

A head node (custom resource node_a) and a second node (node_b), one CPU each, run the tiny CPU
matrix through ``python -m runner --executor ray``: every row ok, each result naming the node that
ran it, both nodes used at once, a rerun keeping the results; and SIGINT to the runner while cells
run on both nodes leaves failed "interrupted" rows and no engine process or Ray worker behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray executor's tests need Ray: pip install '.[ray]' (ray==2.60.0)")

pytestmark = pytest.mark.slow  # a real cluster and real engine runs on the tiny model

CPU_MATRIX = "matrix-cpu.yaml"
RERUN = "tests/fixtures/matrices/e2e_rerun.yaml"  # two quick CPU cells
INTERRUPT = "tests/fixtures/matrices/e2e_interrupt.yaml"  # three longer CPU cells
RAY = str(Path(sys.executable).parent / "ray")
DEADLINE_S = 300  # guards against a hung test only
OBJECT_STORE = str(100 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# the head notices a dead node within seconds (Ray's default health check waits about half a minute)
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _ray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAST_HEALTH_CHECK}
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def ray_processes() -> list[str]:
    """Command lines of live Ray processes on this machine (raylet, GCS, workers: ray::...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if argv.startswith("ray::") or any(name in argv for name in ("/raylet ", "gcs_server", "default_worker.py")):
            found.append(argv[:200])
    return found


def engine_processes() -> list[int]:
    """Pids of cell engines started by a node (their spec lies in a node's scratch run folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--spec" in argv and any(b"/inference-matrix-ray-" in a for a in argv):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def cluster():
    """A head (node_a) and a second node (node_b) with one CPU each; its address. Stopped, and checked gone."""
    assert not ray_processes(), "a Ray cluster is already running on this machine"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE}"]
    try:
        _ray(
            "start", "--head", f"--port={port}", "--resources", '{"node_a": 1}', "--include-dashboard=false",
            f"--temp-dir={temp}", *common,
        )  # fmt: skip
        _ray("start", f"--address=127.0.0.1:{port}", "--resources", '{"node_b": 1}', *common)
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


def _runner(*args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return [sys.executable, "-m", "runner", *args], env


def _rows(folder: Path) -> list[tuple[str, str, str, str]]:
    """Each table row's software, settings, status and, for a row that did not run, its Notes."""
    import csv

    with open(folder / "table.csv", newline="") as table:
        return [
            (r["Software"], r["Settings"], r["Status"], "" if r["Status"] == "ok" else r["Notes"])
            for r in csv.DictReader(table)
        ]


def test_the_cpu_matrix_runs_across_both_nodes_with_the_local_table(cluster, runner_cli, model_store, tmp_path):
    """matrix-cpu.yaml through --executor ray gives the rows the local executor gives (the same settings ok, the
    same reasons for those this machine cannot run), each result naming the node that ran it, both nodes used;
    a rerun keeps every ok result."""
    local = tmp_path / "local"
    done = runner_cli(CPU_MATRIX, "--executor", "local", "-o", str(local), "--store", str(model_store), "--strict",
                      timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    folder = tmp_path / "ray"
    args = (CPU_MATRIX, "--executor", "ray", "--ray-address", cluster, "-o", str(folder), "--store", str(model_store))
    done = runner_cli(*args, "--strict", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sum(line.startswith("node ") for line in done.stdout.splitlines()) == 2, done.stdout
    assert _rows(folder) == _rows(local)
    assert sum(status == "ok" for _, _, status, _ in _rows(folder)) >= 8  # transformers, llama.cpp, CTranslate2

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    for result in results:
        assert result["executor"] == "ray"
        node = result["node"]
        assert node["executor"] == "local" and node["gpus"] == []
        assert node["hostname"] == socket.gethostname() and len(node["ray_node_id"]) == 56
        assert node["custom_resources"] in (["node_a"], ["node_b"])
        if result["status"] == "ok":
            assert result["measured_with"]["hardware"].startswith("CPU: ")
            assert result["measured_with"]["engine_environment"].startswith("local ")
            assert len(result["metrics"]["tokens_per_s"]["values"]) == 3
            log = (folder / "logs" / f"{result['cell']['id']}.log").read_text()
            assert "/inference-matrix-ray-" in log.splitlines()[0]  # the node's command line, brought back
    assert {tuple(r["node"]["custom_resources"]) for r in results} == {("node_a",), ("node_b",)}
    assert not list(Path(tempfile.gettempdir()).glob("inference-matrix-ray-*"))  # nodes' scratch folders removed

    again = runner_cli(*args, timeout=DEADLINE_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    kept = [line for line in again.stdout.splitlines() if "kept earlier ok result" in line]
    assert len(kept) == sum(r["status"] == "ok" for r in results), again.stdout


def test_an_unreachable_cluster_is_one_line(runner_cli, model_store, tmp_path):
    port = _free_port()  # nothing listens there
    done = runner_cli(RERUN, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "-o", str(tmp_path / "r"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answered there")
    assert len(done.stderr.strip().splitlines()) == 1


def test_interrupt_stops_the_cells_on_both_nodes_and_leaves_nothing(cluster, repo, model_store, tmp_path):
    folder = tmp_path / "run"
    command, env = _runner(
        INTERRUPT, "--executor", "ray", "--ray-address", cluster, "-o", str(folder), "--store", str(model_store)
    )
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        runner = subprocess.Popen(
            command, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(engine_processes()) < 2:  # a cell's engine running on each node
            assert runner.poll() is None, out.read_text()[-3000:] + err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no two engines started"
            time.sleep(0.1)
        assert len([p for p in ray_processes() if "CellOnNode" in p]) >= 2  # the cells' actors, seen
        os.kill(runner.pid, signal.SIGINT)  # the runner only, as Ctrl-C in its terminal would
        code = runner.wait(timeout=DEADLINE_S)
    finally:
        if runner.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("interrupted: finished cells are kept"), stderr

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    assert len(results) == 3, stdout[-3000:]
    stopped = [r for r in results if r.get("node")]  # the two that ran, one on each node
    assert sorted(r["node"]["custom_resources"] for r in stopped) == [["node_a"], ["node_b"]]
    for result in stopped:
        assert result["status"] == "failed" and result["reason"].startswith("interrupted"), result["reason"]
        assert result["exit_code"] == -signal.SIGTERM  # the node's executor stopped it
    queued = [r for r in results if not r.get("node")]
    assert len(queued) == 1 and queued[0]["reason"].startswith("interrupted"), queued
    assert (folder / "table.md").is_file()

    deadline = time.monotonic() + 30
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_processes()  # no cell outlives the run, on either node
    # the runner's actors are gone: only the nodes' own idle workers may remain
    deadline = time.monotonic() + 30
    while any("CellOnNode" in p for p in ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in ray_processes() if "CellOnNode" in p]


def _raylet_of(resource: str) -> int:
    """The pid of the raylet of the node started with this custom resource."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/raylet") and any(a.startswith(b"--static_resource_list=" + resource.encode() + b",")
                                                for a in argv):  # fmt: skip
            return int(entry.name)
    raise AssertionError(f"no raylet with the resource {resource}")


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_lost_node_turns_its_cell_into_a_failed_row_and_the_rest_runs(cluster, repo, model_store, tmp_path):
    """node_b's raylet killed (SIGKILL) while a cell runs there, as a node that dies or drops off the network:
    that cell becomes a failed row naming the lost node, its engine does not outlive the node's worker, and the
    other cells finish on node_a. Last in this module: the cluster has one node afterwards."""
    folder = tmp_path / "run"
    command, env = _runner(
        INTERRUPT,
        "--executor",
        "ray",
        "--ray-address",
        cluster,
        "-o",
        str(folder),
        "--store",
        str(model_store),
        "--strict",
    )
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    raylet = _raylet_of("node_b")
    with open(out, "w") as stdout, open(err, "w") as stderr:
        runner = subprocess.Popen(
            command, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # until node_b runs an engine: its parent is node_b's worker, whose parent is node_b's raylet
            on_b = [p for p in engine_processes() if _parent(_parent(p)) == raylet]
            if on_b:
                break
            assert runner.poll() is None, out.read_text()[-3000:] + err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no engine started on node_b"
            time.sleep(0.1)
        os.kill(raylet, signal.SIGKILL)
        code = runner.wait(timeout=DEADLINE_S)
    finally:
        if runner.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 3, stdout[-3000:] + stderr[-3000:]  # --strict: a cell failed; the table is rendered

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    assert len(results) == 3, stdout[-3000:]
    lost = [r for r in results if r["status"] != "ok"]
    assert len(lost) == 1 and lost[0]["reason"].startswith("the Ray node running this cell was lost"), lost
    ran = [r for r in results if r["status"] == "ok"]
    assert len(ran) == 2 and all(r["node"]["custom_resources"] == ["node_a"] for r in ran)
    assert (folder / "table.md").is_file()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in on_b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in on_b if _alive(p)]  # the engine died with its node's worker (parent-death signal)


def _alive(pid: int) -> bool:
    """Running, not merely a zombie left unreaped (this machine's pid 1 may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
