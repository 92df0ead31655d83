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

from runner.results import not_started, outcome

ENTRYPOINTS = Path(__file__).resolve().parents[2] / "entrypoints"
KILL_GRACE_S = 10

# NVLink multicast can take a shared host's GPUs out of service: keep it off in every child
# (vLLM's symmetric-memory all-reduce uses it too).
SAFE_MULTI_GPU_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
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
