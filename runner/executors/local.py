"""Local executor: each cell in its own subprocess and process group, on exactly its GPUs.

The child is the engine's entrypoint script run by a Python that has the engine
installed (this interpreter unless --python names another). stdin is closed,
stdout and stderr go to the cell's log, CUDA_VISIBLE_DEVICES holds the cell's
GPUs in nvidia-smi (PCI bus) order, a CPU cell starts under `taskset` on the
run's CPU set (its threads and workers inherit it), and the whole process group
is killed when the cell ends or times out, so no engine worker outlives its cell.
Where util-linux's setpriv is found, the child also starts with a parent-death
signal (SIGKILL): should the runner itself die (killed, or a cluster node's
worker lost with its node), the engine goes with it instead of holding its GPUs.
A tool run beside a cell (a serving cell's load generator, an engine's own
benchmark) runs on the job's client CPUs where it has them (a CPU serving cell's,
apart from its server's), and gets a temporary folder of its own as TMPDIR,
removed when it ends: AIPerf leaves its IPC and dataset folders in the temporary
folder after every run (and their files when it is killed), which would
otherwise pile up in /tmp, level by level.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runner import interrupts
from runner.cpuset import format_cpus
from runner.errors import UserError
from runner.images import entrypoint_files
from runner.job import ExecutorOptions, Job
from runner.results import not_started, outcome

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runner.expand import Cell

ENTRYPOINTS = Path(__file__).resolve().parents[2] / "entrypoints"
KILL_GRACE_S = 10
# the child gets SIGKILL when the thread that started it dies (the log still shows the command itself)
WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
# every installed distribution of the cell's interpreter, name and version: an upgrade changes the environment
PACKAGES_SCRIPT = (
    "import importlib.metadata as m; "
    "print(sorted({(d.metadata['Name'] or '').lower() + '==' + d.version for d in m.distributions()}))"
)


def cell_environment(
    gpus: tuple[int, ...], job_env: dict[str, str], base: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment (or base) with the job's variables (safety, engine's) and the cell's GPUs."""
    env = dict(os.environ if base is None else base)
    env.update(job_env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def local_environment(python: str, packages_digest: str, cell: Cell) -> str:
    """The local environment line of a cell: the interpreter, its packages' digest and the entrypoint files."""
    files = hashlib.sha256()
    for path in entrypoint_files(cell.engine, ENTRYPOINTS):
        files.update(path.name.encode() + (path.read_bytes() if path.is_file() else b"(missing)"))
    return f"local {python}; packages {packages_digest}; entrypoints {files.hexdigest()[:12]}"


def _terminate_group(pgid: int) -> None:
    """SIGTERM to the group, then SIGCONT: a stopped process (Ctrl-Z, a debugger, a test's SIGSTOP) holds a
    SIGTERM pending until it is continued; otherwise an interrupted run would wait for the cell's timeout,
    and a kill for the SIGKILL after its grace."""
    os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGCONT)


def _kill_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if sig == signal.SIGTERM:
                _terminate_group(process.pid)
            else:
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


def _on_cpus(cpus: tuple[int, ...], command: list[str]) -> list[str]:
    """The command started under taskset on those CPUs (its threads and children inherit them), or as it is."""
    return ["taskset", "--cpu-list", format_cpus(cpus), *command] if cpus else command


class LocalExecutor:
    name = "local"

    def __init__(self, python: str | None = None, tools: dict[str, str | None] | None = None):
        self.python = python or sys.executable
        self.tools = tools or {}  # name -> executable
        self.interrupted = False
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._packages_digest: str | None = None

    def environment(self, cell: Cell) -> str:
        return local_environment(self.python, self._packages(), cell)

    def _packages(self) -> str:
        """A digest of every distribution (name and version) the interpreter has installed, read once."""
        if self._packages_digest is None:
            done = subprocess.run(
                [self.python, "-c", PACKAGES_SCRIPT], capture_output=True, text=True, stdin=subprocess.DEVNULL
            )
            listing = done.stdout if done.returncode == 0 else f"unreadable: {done.stderr[-300:]}"
            self._packages_digest = hashlib.sha256(listing.encode()).hexdigest()[:12]
        return self._packages_digest

    def stop_all(self) -> None:
        """Stop every running cell and start no other (the run was interrupted)."""
        with self._lock:
            self.interrupted = True
            for process in list(self._running):
                with contextlib.suppress(ProcessLookupError):
                    _terminate_group(process.pid)

    @contextlib.contextmanager
    def _child(
        self, command: list[str], log: TextIO, env: dict[str, str], cwd: Path | None
    ) -> Iterator[subprocess.Popen | None]:
        """The command started in a process group of its own and recorded for stop_all, or None where the run was
        stopped before it could start; the group killed on every way out of the block (its SIGTERM, SIGKILL after
        the grace), an interrupt raised in the wait included: a serving sweep waits on the main thread, and
        stop_all's SIGTERM alone left AIPerf processes that ignore it running after the run. A stop in the main
        thread lands once the child is recorded, never inside Popen, where it left the child running unseen
        (runner.interrupts)."""
        process = None
        try:
            with interrupts.held(), self._lock:  # an interrupt either finds this process or stops it from starting
                if not self.interrupted:
                    process = subprocess.Popen(
                        [*WITH_PARENT, *command],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env=env,
                        cwd=cwd,
                    )
                    self._running.add(process)
            yield process
        finally:
            if process is not None:
                _kill_group(process)
                self._running.discard(process)

    def run(self, job: Job) -> dict[str, Any]:
        """Run the job's entrypoint in a child process group and return the cell's result."""
        cell = job.cell
        script = ENTRYPOINTS / job.entrypoint
        command = [self.python, str(script), "--spec", str(job.spec_path), "--output", str(job.child_result_path)]
        command = _on_cpus(job.cpus, command)  # before the interpreter starts, so OpenMP sizes its pool to the set
        job.child_result_path.unlink(missing_ok=True)
        with open(job.log_path, "w") as log:
            log.write(f"$ {' '.join(command)}\n# CUDA_VISIBLE_DEVICES={','.join(map(str, cell['gpus']))}\n")
            log.flush()
            timed_out = False
            with self._child(command, log, cell_environment(tuple(cell["gpus"]), job.env), ENTRYPOINTS) as process:
                if process is None:
                    return not_started(job)
                try:
                    process.wait(timeout=job.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
            code = process.returncode
        return outcome(job, code, timed_out=timed_out, interrupted=self.interrupted)

    def run_tool(self, job: Job, tool: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """The tool's local executable with args, in its own process group (killed whole on a timeout), on the
        job's client CPUs where it has them."""
        command = _on_cpus(job.client_cpus, [self.tools[tool], *args])
        return self._beside(command, dict(os.environ), None, log_path, timeout_s)

    def run_in_cell(self, job: Job, script: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """The script under the cell's interpreter and environment (its GPUs), in its own process group, on the
        job's client CPUs where it has them (it times the cell: an engine's own benchmark)."""
        env = cell_environment(tuple(job.cell["gpus"]), job.env)
        command = _on_cpus(job.client_cpus, [self.python, str(ENTRYPOINTS / script), *args])
        return self._beside(command, env, ENTRYPOINTS, log_path, timeout_s)

    def _beside(
        self, command: list[str], env: dict[str, str], cwd: Path | None, log_path: Path, timeout_s: float
    ) -> int | None:
        """The command in its own process group with a temporary folder of its own (TMPDIR), both gone after."""
        scratch = tempfile.mkdtemp(prefix="inference-matrix-tool-")
        try:
            return self._run_beside(command, {**env, "TMPDIR": scratch}, cwd, log_path, timeout_s)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_beside(
        self, command: list[str], env: dict[str, str], cwd: Path | None, log_path: Path, timeout_s: float
    ) -> int | None:
        with open(log_path, "w") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            with self._child(command, log, env, cwd) as process:
                if process is None:
                    return None
                try:
                    code = process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    code = None
        return code


def from_options(options: ExecutorOptions) -> LocalExecutor:
    if any(not c.gpus for c in options.cells) and shutil.which("taskset") is None:
        raise UserError(
            "taskset not found: the local executor pins CPU cells to their CPUs with it; install util-linux "
            "(apt-get install util-linux) or run with --executor docker"
        )
    missing = [name for name, path in options.tools.items() if not path]
    if missing:
        raise UserError(f"the local executor runs {', '.join(missing)} from this machine: name its executable")
    return LocalExecutor(python=options.python, tools=dict(options.tools))
