"""Local executor: each cell in its own subprocess and process group, on exactly its GPUs.

The child is the engine's entrypoint script run by a Python that has the engine
installed (this interpreter unless --python names another). stdin is closed,
stdout and stderr go to the cell's log, CUDA_VISIBLE_DEVICES holds the cell's
GPUs in nvidia-smi (PCI bus) order, and the whole process group is killed when
the cell ends or times out, so no engine worker outlives its cell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from runner.results import failure, read_result, reconcile, tail

ENTRYPOINTS = Path(__file__).resolve().parents[2] / "entrypoints"
KILL_GRACE_S = 10

# NVLink multicast can take a shared host's GPUs out of service: keep it off in every child.
SAFE_MULTI_GPU_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def cell_environment(gpus: tuple[int, ...], base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(SAFE_MULTI_GPU_ENV)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # the leader exited; sweep any children left in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of host memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class LocalExecutor:
    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self.interrupted = False
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()

    def stop_all(self) -> None:
        """Stop every running cell and start no other (the run was interrupted)."""
        with self._lock:
            self.interrupted = True
            for process in list(self._running):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run the job (cell, spec path, result path, log path, timeout) and return its result."""
        cell = job["spec"]["cell"]
        script = ENTRYPOINTS / job["entrypoint"]
        command = [self.python, str(script), "--spec", str(job["spec_path"]), "--output", str(job["result_path"])]
        job["result_path"].unlink(missing_ok=True)
        with open(job["log_path"], "w") as log:
            log.write(f"$ {' '.join(command)}\n# CUDA_VISIBLE_DEVICES={','.join(map(str, cell['gpus']))}\n")
            log.flush()
            with self._lock:  # an interrupt either finds this process or stops it from starting
                if self.interrupted:
                    return not_started(job)
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=cell_environment(tuple(cell["gpus"])),
                    start_new_session=True,
                    cwd=ENTRYPOINTS,
                )
                self._running.add(process)
            timed_out = False
            try:
                process.wait(timeout=job["timeout_s"])
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process)
            self._running.discard(process)
            code = process.returncode
        return outcome(job, code, timed_out=timed_out, interrupted=self.interrupted)


def not_started(job: dict[str, Any]) -> dict[str, Any]:
    """The result of a cell that an interrupt kept from starting."""
    spec = job["spec"]
    reason = "interrupted: the run was stopped before this cell started"
    return {**failure(spec["cell"], spec["model"], spec["workload"], "failed", reason), "exit_code": None}


def outcome(job: dict[str, Any], code: int, timed_out: bool, interrupted: bool) -> dict[str, Any]:
    """The cell's result from its exit code, its own report and its log (shared by every executor).

    A cell that finished ok before an interrupt reached it keeps its measurement.
    """
    cell = job["spec"]["cell"]
    log_tail = tail(Path(job["log_path"]).read_text(errors="replace"))
    fallback = failure(cell, job["spec"]["model"], job["spec"]["workload"], "failed", "")
    if timed_out:
        reason = f"timeout: no result after {job['timeout_s']} s; the cell was killed"
        return {**fallback, "status": "timeout", "reason": reason, "exit_code": code, "log_tail": log_tail}
    result = reconcile(read_result(job["result_path"]), code, log_tail, fallback)
    if interrupted and result["status"] != "ok":
        reason = "interrupted: the run was stopped while this cell ran; the cell was killed"
        return {**fallback, "reason": reason, "exit_code": code, "log_tail": log_tail}
    if result["status"] != "ok" and code and "exit code" in (result.get("reason") or ""):
        result["reason"] = result["reason"].replace(f"exit code {code}", describe_exit(code), 1)
    return result
