"""What the runner hands an executor for one cell, and what every executor offers in return.

A Job names its files apart: the spec the child reads, the scratch path the
child writes its own report to, the result path where the runner publishes the
reconciled result, and the log. An executor runs a job and returns the
reconciled result; stop_all() stops every running cell and starts no other.
An executor whose cells are placed by a cluster (ray) says so with
``places_cells = True`` and offers ``placement(cell, previous)``: the runner
then neither serialises cells on this machine's GPUs nor checks them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.build import BuildOptions
    from runner.expand import Cell


@dataclass(frozen=True)
class Job:
    spec: dict[str, Any]  # what the child reads: cell, model, workload, schema version, what to record
    spec_path: Path
    child_result_path: Path  # scratch: the child's own report, before the runner reconciles it
    result_path: Path  # the cell's published result (cells/<id>.json)
    log_path: Path
    entrypoint: str  # the engine's script in entrypoints/
    timeout_s: int
    env: dict[str, str]  # variables set for this cell: the safety variables and the engine's own
    cpus: tuple[int, ...] = ()  # a CPU cell's CPU set, pinned by the executor (runner/cpuset.py); () for GPU cells
    # a CPU serving cell's load generators' CPUs (run_tool, run_in_cell), apart from its server's where the set
    # allows (cpuset.split_for_clients); () = wherever the system runs them
    client_cpus: tuple[int, ...] = ()

    @property
    def cell(self) -> dict[str, Any]:
        return self.spec["cell"]


class Executor(Protocol):
    name: str
    interrupted: bool
    tools: dict[str, str]  # what run_tool runs for each tool: its local executable, or its image

    def run(self, job: Job) -> dict[str, Any]:
        """Run the cell and return its result (status, reason, metrics), never raising for a cell's failure."""
        ...

    def stop_all(self) -> None:
        """Stop every running cell and start no other (the run was interrupted)."""
        ...

    def run_tool(self, job: Job, tool: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """Run a tool beside the job's running cell, where it reaches the cell's 127.0.0.1 (a serving cell's
        load generator); its output to log_path. The exit code, or None if it ran past timeout_s (then killed)."""
        ...

    def run_in_cell(self, job: Job, script: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """Run an entrypoints/ script in the job's running cell's environment (its container, or the local
        interpreter), beside the cell (an engine's own benchmark against its server). Exit code, or None on a
        timeout."""
        ...

    def environment(self, cell: Cell) -> str:
        """What the cell's engine runs in, as one comparable line: its image tag, or the local interpreter
        with a digest of its installed packages and the cell's entrypoint files (runner/reuse.py)."""
        ...


@dataclass(frozen=True)
class ExecutorOptions:
    """What a run gives the executor it chooses; each executor takes what it needs."""

    run_folder: Path
    cells: list[Cell]  # the cells this run will hand it (the docker executor prepares their images)
    python: str | None = None  # local: the interpreter that has the engines (default: the runner's)
    build_options: dict[str, BuildOptions] = field(default_factory=dict)  # docker: per image flavour
    build_missing: bool = True  # docker: build missing images (False: refuse and name them)
    # tools run beside cells (run_tool): name -> local executable (local executor) or None (docker: the
    # tool's image, images/<name>/, built like an engine's)
    tools: dict[str, str | None] = field(default_factory=dict)
    ray_address: str | None = None  # ray: the cluster's address (default: RAY_ADDRESS)
    ray_inner: str = "local"  # ray: the executor each node runs its cells with (local or docker)
