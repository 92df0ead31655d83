"""Never measure on a busy GPU: before a GPU cell starts, wait until its GPUs are free.

An engine can leave processes behind that hold most of a card (its worker
processes may outlive their parent); the next cell would then measure on
a card already in use, or fail with a misleading error. The executors kill a
cell's whole process group; this guard checks what the driver says before the
next cell starts: every GPU of the cell must show at most ``BUSY_MIB`` in use
(``BENCH_GPU_BUSY_MIB``, default 1024: a display or an idle CUDA context
fits under it) and no compute process. It polls for up to ``WAIT_S`` seconds
(``BENCH_GPU_WAIT_S``, default 120) while memory drains; a GPU still busy then
makes the cell a failed row with the reason, and the matrix goes on.

It reads ``nvidia-smi`` (present wherever the NVIDIA driver is); without it the
guard says so once and lets cells run.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

BUSY_MIB = float(os.environ.get("BENCH_GPU_BUSY_MIB", "1024"))
WAIT_S = float(os.environ.get("BENCH_GPU_WAIT_S", "120"))
POLL_S = 1.0


@dataclass(frozen=True)
class GpuUse:
    index: int
    uuid: str
    used_mib: float
    processes: tuple[tuple[int, float], ...]  # (pid, MiB)


def _csv(text: str) -> list[list[str]]:
    return [[field.strip() for field in row] for row in csv.reader(io.StringIO(text)) if row]


def parse(gpus_csv: str, apps_csv: str) -> dict[int, GpuUse]:
    """nvidia-smi's --query-gpu=index,uuid,memory.used and --query-compute-apps=gpu_uuid,pid,used_memory."""
    processes: dict[str, list[tuple[int, float]]] = {}
    for uuid, pid, used in _csv(apps_csv):
        processes.setdefault(uuid, []).append((int(pid), _mib(used)))
    found = {}
    for index, uuid, used in _csv(gpus_csv):
        found[int(index)] = GpuUse(int(index), uuid, _mib(used), tuple(processes.get(uuid, ())))
    return found


def _mib(field: str) -> float:
    try:
        return float(field.split()[0])
    except (ValueError, IndexError):  # "[N/A]" where the driver cannot tell
        return 0.0


def nvidia_smi(query: str) -> str | None:
    """nvidia-smi's CSV answer (no header, no units) to one --query-... argument; None where it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_gpus() -> dict[int, GpuUse] | None:
    """What nvidia-smi says now, or None where it is missing or fails."""
    gpus = nvidia_smi("--query-gpu=index,uuid,memory.used")
    if gpus is None:
        return None
    return parse(gpus, nvidia_smi("--query-compute-apps=gpu_uuid,pid,used_memory") or "")


def busy_reason(state: dict[int, GpuUse], gpus: tuple[int, ...], busy_mib: float = BUSY_MIB) -> str | None:
    """Why the cell's GPUs are not free, or None."""
    problems = []
    for index in gpus:
        use = state.get(index)
        if use is None:
            problems.append(f"GPU {index} is not in nvidia-smi's list")
        elif use.processes or use.used_mib > busy_mib:
            who = ", ".join(f"pid {pid} ({mib:.0f} MiB)" for pid, mib in use.processes) or "no process listed"
            problems.append(f"GPU {index} has {use.used_mib:.0f} MiB in use ({who})")
    return "; ".join(problems) or None


class GpuGuard:
    """Wait for a cell's GPUs to be free; thread-safe (each call reads the driver afresh)."""

    def __init__(self, read=read_gpus, wait_s: float = WAIT_S, poll_s: float = POLL_S, log=print):
        self.read = read
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.log = log
        self.unavailable_said = False

    def wait_until_free(self, gpus: tuple[int, ...]) -> str | None:
        """None once the GPUs are free; else the reason they were still busy after wait_s."""
        if not gpus:
            return None
        deadline = time.monotonic() + self.wait_s
        waited = False
        while True:
            state = self.read()
            if state is None:
                if not self.unavailable_said:
                    self.log("note: nvidia-smi did not answer: cannot check that GPUs are free before cells")
                    self.unavailable_said = True
                return None
            reason = busy_reason(state, gpus)
            if reason is None:
                return None
            if time.monotonic() >= deadline:
                return f"GPU busy: {reason} after waiting {self.wait_s:.0f} s; not measured on a busy GPU"
            if not waited:
                self.log(f"waiting for GPU {','.join(map(str, gpus))} to be free: {reason}")
                waited = True
            time.sleep(self.poll_s)
