"""Ctrl-C / SIGTERM on ``python -m runner`` while a CPU cell runs: the real runner, the real
entrypoint, the real tiny model, real signals.

README: "Ctrl-C (or SIGTERM) stops the running cells, keeps every finished result and renders
the table." The runner is signalled by its pid only; the cell's engine runs in its own process
group, so the runner itself must stop it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from two_node_ray import wait_for

pytestmark = pytest.mark.slow  # real runs interrupted mid-matrix

MATRIX = "tests/fixtures/matrices/e2e_interrupt.yaml"
INTERRUPTED_LINE = "interrupted: finished cells are kept in the run folder; rerun to measure the rest"
# guards against a hung test only; nothing is asserted about how long anything takes
DEADLINE_S = 300


def cell_ids(runner_cli) -> list[str]:
    done = runner_cli(MATRIX, "--list", timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split("  ", 1)[0] for line in done.stdout.splitlines()]


def processes_with_argument(argument: str) -> list[int]:
    """Pids of live processes whose command line has exactly this argument (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(int(entry.name))
    return found


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def interruptible() -> None:
    """SIGINT back to its default in the runner: a shell's background job (`pytest &`) inherits it ignored,
    and Python then raises no KeyboardInterrupt, as POSIX intends for nohup'd jobs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_finished_stops_running_skips_rest(runner_cli, repo, model_store, tmp_path, signum):
    first, second, third = cell_ids(runner_cli)
    folder = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    engine_pid = None
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        runner = subprocess.Popen(
            [sys.executable, "-m", "runner", MATRIX, "-o", str(folder), "--store", str(model_store)],
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=interruptible,
        )
    try:
        wait_for(lambda: (folder / "cells" / f"{first}.json").is_file(), runner, "the first result", stdout_path)
        wait_for(lambda: (folder / "logs" / f"{second}.log").is_file(), runner, "the second log", stdout_path)
        second_spec = str(folder / "spec" / f"{second}.json")
        # the second cell's engine process (its command line names its spec file)
        pids = wait_for(lambda: processes_with_argument(second_spec), runner, "the second engine", stdout_path)
        assert len(pids) == 1, pids
        engine_pid = pids[0]
        assert os.getpgid(engine_pid) == engine_pid  # its own process group, apart from the runner's
        assert os.getpgid(engine_pid) != os.getpgid(runner.pid)

        # frozen, the engine cannot finish its cell however late the runner acts on the signal (a CI run once
        # saw the tiny model's cell end ok first, on a machine busy building images); the runner's stop must
        # continue it (SIGCONT after its SIGTERM), else the run would wait for the cell's timeout (600 s)
        os.kill(engine_pid, signal.SIGSTOP)
        assert not (folder / "cells" / f"{second}.json").exists()
        os.kill(runner.pid, signum)  # the runner only, as a supervisor (or kill PID) would
        code = runner.wait(timeout=DEADLINE_S)
    finally:
        for pgid in (runner.pid, engine_pid):
            if pgid is not None and group_exists(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.wait(timeout=30)
    stdout, stderr = stdout_path.read_text(), stderr_path.read_text()

    assert code == 128 + signum, stdout[-3000:] + stderr[-3000:]  # 130 for Ctrl-C, 143 for SIGTERM
    assert stderr.splitlines()[-1] == INTERRUPTED_LINE, stderr

    # no engine process outlives the run: neither the cell's process nor anything in its group
    assert processes_with_argument(second_spec) == []
    assert not group_exists(engine_pid)

    # the first cell finished before the signal: its result is kept, ok
    done = json.loads((folder / "cells" / f"{first}.json").read_text())
    assert done["status"] == "ok"
    assert done["exit_code"] == 0
    assert len(done["metrics"]["tokens_per_s"]["values"]) == 2
    assert f"[{first}] ok" in stdout

    # the second was running: failed, reason says it was interrupted, its process was stopped
    stopped = json.loads((folder / "cells" / f"{second}.json").read_text())
    assert stopped["status"] == "failed"
    assert stopped["reason"].startswith("interrupted"), stopped["reason"]
    assert stopped["exit_code"] == -signal.SIGTERM  # the runner's stop, not a crash of its own
    assert stopped["cell"]["id"] == second
    assert stopped["metrics"] == {}
    assert f"[{second}] failed: interrupted" in stdout

    # the third never started: no spec, no log, no result
    assert not (folder / "cells" / f"{third}.json").exists()
    assert not (folder / "logs" / f"{third}.log").exists()
    assert not (folder / "spec" / f"{third}.json").exists()
    assert f"[{third}]" not in stdout
    # and no scratch file is left behind in cells/
    assert sorted(p.name for p in (folder / "cells").iterdir()) == sorted([f"{first}.json", f"{second}.json"])

    # the table is rendered over what is there
    assert (folder / "table.md").is_file()
    assert f"table: {folder.resolve() / 'table.md'} (2 of 3 cells have results)" in stdout
    with open(folder / "table.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["Cell"] for row in table] == [first, second]
    assert [row["Status"] for row in table] == ["ok", "failed"]
    assert float(table[0]["Avg Tok/s"]) > 0
    assert table[1]["Notes"].startswith("failed: interrupted"), table[1]["Notes"]
    assert table[1]["Avg Tok/s"] == ""

    # the invocation is recorded
    invocations = json.loads((folder / "run.json").read_text())["invocations"]
    assert [run["cells"] for run in invocations] == [[first, second, third]]


def test_interrupt_just_as_a_cell_starts_does_not_let_it_run(runner_cli, repo, model_store, tmp_path):
    """Deterministic version of Ctrl-C landing while the runner is starting a cell.

    The first cell's result path is a named pipe, so the runner's worker blocks at a known point
    (reading any earlier result, before it writes the spec and starts the engine) while the runner
    is signalled; then the pipe is released and the worker goes on as it would have.
    """
    matrix = "tests/fixtures/matrices/e2e_rerun.yaml"
    listed = runner_cli(matrix, "--list", timeout=60)
    first, second = (line.split("  ", 1)[0] for line in listed.stdout.splitlines())
    folder = tmp_path / "run"
    (folder / "cells").mkdir(parents=True)
    gate = folder / "cells" / f"{first}.json"
    os.mkfifo(gate)
    runner = subprocess.Popen(
        [sys.executable, "-m", "runner", matrix, "-o", str(folder), "--store", str(model_store)],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    try:
        # opening the write end without blocking succeeds only once the worker has the read end open
        writer = wait_for(lambda: _open_writer(gate), runner, "the first cell's worker")
        os.kill(runner.pid, signal.SIGINT)
        time.sleep(1)  # let the runner handle the signal (stop_all) while the worker is still held
        gate.unlink()
        os.close(writer)  # the worker reads an empty earlier result and carries on
        stdout, stderr = runner.communicate(timeout=DEADLINE_S)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)
    assert runner.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1] == INTERRUPTED_LINE
    assert not (folder / "logs" / f"{second}.log").exists()
    # after the interrupt the first cell's engine must not run to the end of its measurement
    log = folder / "logs" / f"{first}.log"
    if log.exists():
        assert f"[{first}] ok:" not in log.read_text()
    stopped = folder / "cells" / f"{first}.json"
    if stopped.exists():
        result = json.loads(stopped.read_text())
        assert result["status"] != "ok"
        # a reason that says the cell was killed must come with a killed exit status
        assert result["exit_code"] != 0, result["reason"]


def _open_writer(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
            raise
        return None


def test_interrupt_during_the_last_cell_keeps_its_row(runner_cli, repo, model_store, tmp_path):
    """A run of one cell (or the matrix's last), interrupted as `timeout --signal=INT` does on the GPU machine:
    the running cell still gets its row and the table is rendered (the run used to exit without either)."""
    first = cell_ids(runner_cli)[0]
    folder = tmp_path / "run"
    runner = subprocess.Popen(
        [sys.executable, "-m", "runner", MATRIX, "-o", str(folder), "--store", str(model_store), "--only", first],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    spec = str(folder / "spec" / f"{first}.json")
    engine_pid = None
    try:
        engine_pid = wait_for(lambda: processes_with_argument(spec), runner, "the engine")[0]
        os.kill(runner.pid, signal.SIGINT)
        stdout, stderr = runner.communicate(timeout=DEADLINE_S)
    finally:
        for pgid in (runner.pid, engine_pid):
            if pgid is not None and group_exists(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        if runner.poll() is None:
            runner.wait(timeout=30)
    assert runner.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1] == INTERRUPTED_LINE, stderr
    assert not group_exists(engine_pid)
    stopped = json.loads((folder / "cells" / f"{first}.json").read_text())
    assert stopped["status"] == "failed" and stopped["reason"].startswith("interrupted"), stopped["reason"]
    assert f"[{first}] failed: interrupted" in stdout
    assert f"table: {folder.resolve() / 'table.md'} (1 of 3 cells have results)" in stdout


SERVING_MATRIX = """\
version: 1
name: interrupted-serving
model: {synthetic: tiny-mistral}
defaults: {gpus: [], timeout_s: 600}
serving:
  levels: [1, 2]
  requests: 4
  warmup_requests: 1
  prompt_tokens: 16
  new_tokens: 64
  engines: {llamacpp: {include: [{quant: f16, cache_ram_mib: 0}]}}
"""


def test_an_interrupted_serving_sweep_keeps_the_levels_it_measured(runner_cli, repo, model_store, tmp_path):
    from two_node_ray import runner_process

    aiperf = Path(sys.prefix) / "aiperf" / "bin" / "aiperf"
    llama_server = Path(sys.prefix) / "llama.cpp" / "bin" / "llama-server"
    if not aiperf.exists() or not llama_server.exists():
        pytest.skip(f"needs {aiperf} (make setup-aiperf) and {llama_server} (make setup-llamacpp)")
    matrix = tmp_path / "serving.yaml"
    matrix.write_text(SERVING_MATRIX)
    folder = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    args = [str(matrix), "-o", str(folder), "--store", str(model_store), "--executor", "local"]
    with runner_process(repo, stdout_path, stderr_path, *args) as runner:
        # level 1 measured, level 2's load generator started: the run is stopped in the middle of the sweep
        wait_for(lambda: "] level 2: " in stdout_path.read_text(), runner, "level 2", stdout_path)
        os.kill(runner.pid, signal.SIGINT)
        code = runner.wait(timeout=DEADLINE_S)
    stdout, stderr = stdout_path.read_text(), stderr_path.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1] == INTERRUPTED_LINE, stderr

    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "failed"
    assert result["reason"] == "interrupted: the run was stopped at level 2; levels [1] kept", result["reason"]
    first, second = result["levels"]
    assert first["level"] == 1 and first["status"] == "ok"
    assert first["metrics"]["requests"] == 4 and first["metrics"]["output_tokens_min"] == 64
    assert first["peak_memory_mib"] > 0  # the server's memory timeline survived the interrupt
    assert second["level"] == 2 and second["status"] == "failed" and second["reason"].startswith("interrupted")
    command_line = result["server"]["command"]
    assert command_line[0] == str(llama_server)
    assert command_line[command_line.index("--cache-ram") + 1] == "0"  # the server setting, taken by llama-server

    # what was measured is in the table and the invocation in run.json, as for offline cells
    table = (folder / "serving.md").read_text()
    assert "| llama.cpp" in table and "interrupted: the run was stopped at level 2" in table
    (invocation,) = json.loads((folder / "run.json").read_text())["invocations"]
    assert invocation["cells"] == [result["cell"]["id"]]
    assert not list((folder / "cells").glob(".*"))  # no handshake or scratch file left
    for program in (str(llama_server), str(aiperf.parent)):
        left = subprocess.run(["pgrep", "-af", program], capture_output=True, text=True)
        assert left.stdout == "", f"{program} left running: {left.stdout}"

    # a rerun keeps level 1 as it was measured and measures level 2, on a new server
    rerun = runner_cli(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "keeping levels [1] of the earlier result (failed); measuring the rest" in rerun.stdout, rerun.stdout
    again = json.loads(path.read_text())
    assert again["status"] == "ok" and [lv["status"] for lv in again["levels"]] == ["ok", "ok"]
    assert again["levels"][0] == {**first, "kept_from": result["started_at"]}
    assert "kept_from" not in again["levels"][1] and again["levels"][1]["metrics"]["requests"] == 4
    assert (
        f"measured by the run of {result['started_at']} (another start of the server)"
        in (folder / "serving.md").read_text()
    )
