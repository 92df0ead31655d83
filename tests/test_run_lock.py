"""One runner per run folder (runner/run_lock.py), for real: a second runner on a folder in use refuses
at once naming the first; once the first is killed (no chance to clean up), the folder is free again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from runner.run_lock import HOLDER_FILE

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from runner.run_lock import run_folder_lock

    sys.argv = ["runner", "matrix-cpu.yaml", "--only", "first"]
    with run_folder_lock(Path(sys.stdin.readline().strip())):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_second_runner_refuses_then_the_folder_frees_when_the_holder_dies(runner_cli, repo, model_store, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        holder.stdin.write(f"{folder}\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held"
        note = json.loads((folder / HOLDER_FILE).read_text())
        assert note["pid"] == holder.pid and note["command"] == "python -m runner matrix-cpu.yaml --only first"
        args = ("matrix-cpu.yaml", "-o", str(folder), "--store", str(model_store))
        started = time.monotonic()
        second = runner_cli(*args, timeout=120)
        assert time.monotonic() - started < 60  # refused at once, not after waiting
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"error: {folder}: another runner is using this run folder (pid {holder.pid} on {note['host']} since "
            f"{note['started_at']}: python -m runner matrix-cpu.yaml --only first); wait for it to finish, or give "
            "this run its own folder with -o"
        )
        assert not list(folder.glob("cells/*"))  # it touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no finally, no release
        holder.wait()
    # the kernel dropped the lock with its holder: the next runner gets the folder (and stops at the next
    # check, an unknown executor, which comes after the lock)
    third = runner_cli(*args, env={**os.environ, "BENCH_EXECUTOR": "dokcer"}, timeout=120)
    assert third.returncode == 1
    assert third.stderr.strip() == (
        "error: BENCH_EXECUTOR=dokcer: unknown executor; choose one of auto, docker, local, ray"
    )
    assert not (folder / HOLDER_FILE).exists()  # a runner that held the folder leaves no note behind
