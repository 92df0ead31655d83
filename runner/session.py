"""One run of a matrix: prepare the model, run each cell (or reuse its earlier ok result), write results.

Per cell the folder gets spec/<id>.json (what the child reads), cells/<id>.json
(the result, written atomically) and logs/<id>.log. CPU cells run pinned to one
CPU set for the whole run (runner/cpuset.py: --cpus, by default every CPU the
runner may use). An ok result already in the folder for the same cell id is kept
only when everything else it was measured with still holds (runner/reuse.py),
unless forced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from runner import cpuset, roofline
from runner.cpu_load import busy_share
from runner.engines import ENGINES
from runner.expand import Cell
from runner.gpu_guard import GpuGuard
from runner.host import card_problem, hardware_of
from runner.job import Executor, Job
from runner.matrix import Matrix
from runner.models import derived
from runner.progress import Progress
from runner.provenance import tool_version
from runner.results import failure, read_result
from runner.reuse import measured_with, why_not_reuse
from runner.scheduler import run_scheduled
from runner.shared import RESULT_SCHEMA_VERSION, SAFETY_ENV, write_json_atomic


def cell_paths(folder: Path, cell: Cell) -> dict[str, Path]:
    return {
        "spec_path": folder / "spec" / f"{cell.id}.json",
        "result_path": folder / "cells" / f"{cell.id}.json",
        "log_path": folder / "logs" / f"{cell.id}.log",
    }


def cell_spec(cell: Cell, matrix: Matrix, model: dict[str, Any]) -> dict[str, Any]:
    """What the cell's child reads: the cell, its model and workload, and what its harness records."""
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": cell.to_json(),
        "model": model,
        "workload": cell.workload(matrix),
        "recorded_env_prefixes": list(ENGINES[cell.engine].recorded_env_prefixes),
    }


def make_job(
    folder: Path,
    cell: Cell,
    matrix: Matrix,
    model: dict[str, Any],
    cpus: tuple[int, ...] = (),
    probe_bandwidth: bool = False,
) -> Job:
    """The cell's job, its spec written to spec/<id>.json; the child writes to a scratch path. A CPU cell
    is pinned to cpus (a GPU cell to nothing). probe_bandwidth: the cell measures its GPUs' bandwidth
    before its model loads (runner.roofline)."""
    paths = cell_paths(folder, cell)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    spec = cell_spec(cell, matrix, model)
    if probe_bandwidth:
        spec["probe_bandwidth"] = True
    paths["spec_path"].write_text(json.dumps(spec, indent=2) + "\n")
    engine = ENGINES[cell.engine]
    return Job(
        spec=spec,
        spec_path=paths["spec_path"],
        child_result_path=folder / "cells" / f".{cell.id}.child.json",
        result_path=paths["result_path"],
        log_path=paths["log_path"],
        entrypoint=engine.entrypoint,
        timeout_s=cell.timeout_s,
        env={**SAFETY_ENV, **engine.cell_env},
        cpus=() if cell.gpus else cpus,
    )


def run_cells(
    matrix: Matrix,
    cells: list[Cell],
    model: dict[str, Any],
    folder: Path,
    executor: Executor,
    max_parallel: int = 1,
    force: bool = False,
    log=None,
    guard: GpuGuard | None = None,
    cpus: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not already measured; return all results in cell order.

    CPU cells run on cpus (default: every CPU this runner may use).

    A GPU cell starts only once its GPUs are free (runner.gpu_guard); if they stay
    busy, the cell is a failed row saying so and nothing runs on them. After each
    cell, the run's progress (runner.progress): cells done, time spent, what is left.
    """
    progress = Progress({c.id: c.timeout_s for c in cells}, max_parallel)
    log = log or progress.log
    guard = guard or GpuGuard(log=log)
    cpus = cpus or cpuset.available()

    placed = getattr(executor, "places_cells", False)  # a cluster's nodes: chosen, and guarded, where cells run

    def run_one(cell: Cell) -> dict[str, Any]:
        cell_model, problem = _cell_model(cell, model, log)
        pinned = None if cell.gpus else cpuset.format_cpus(cpus)
        hardware = hardware_of(cell.gpus)
        wanted = measured_with(cell_model, executor.name, executor.environment(cell), hardware, pinned)
        previous = read_result(cell_paths(folder, cell)["result_path"])
        if placed:
            wanted.update(executor.placement(cell, previous))
            hardware, pinned = wanted["hardware"], wanted["cpus"]
        why = "--force" if force and previous else why_not_reuse(previous, wanted)
        if why is None:
            log(
                f"[{cell.id}] kept earlier ok result ({'; '.join(cell.label)}): same checkpoint, engine "
                "environment, executor and hardware" + (f", {cpuset.named(pinned)}" if pinned else "")
            )
            progress.finished(cell.id, previous, kept=True)
            return previous
        if previous is not None:
            log(f"[{cell.id}] measuring again: {why}")
        job = make_job(folder, cell, matrix, cell_model, cpus, roofline.needs_probe(folder, cell.gpus, hardware))
        # a cell for a card kind runs only on GPUs of that kind (a cluster's executor places it on such a node)
        elsewhere = None if placed or not cell.card else card_problem(cell.card, cell.gpus)
        busy = None if problem or placed or elsewhere else guard.wait_until_free(cell.gpus)
        where = "a node of the cluster" if placed else _where(cell, cpus)
        log(f"[{cell.id}] running {cell.software}: {'; '.join(cell.label)} on {where}")
        load = None if cell.gpus or problem or placed else busy_share()
        started = time.time()
        if elsewhere:
            result = failure(job.cell, cell_model, job.spec["workload"], "unsupported", elsewhere)
        elif problem or busy:
            result = failure(job.cell, cell_model, job.spec["workload"], "failed", problem or busy)
        else:
            result = _execute(cell, job, executor)
        result["wall_s"] = time.time() - started
        result["executor"] = executor.name
        result["measured_with"] = {**wanted, **(result.get("node") or {}).get("measured_with", {})}
        result["runner"] = tool_version()
        if load is not None:
            result["host_cpu_busy_before"] = round(load, 3)
        write_json_atomic(job.result_path, result)
        roofline.keep(folder, result)
        job.child_result_path.unlink(missing_ok=True)
        log(f"[{cell.id}] {result['status']}" + (f": {result['reason']}" if result.get("reason") else ""))
        progress.finished(cell.id, result)
        return result

    try:
        parallel = len(cells) if placed else max_parallel
        return run_scheduled(
            cells, lambda c: c.gpus, run_one, parallel, on_interrupt=executor.stop_all, exclusive=not placed
        )
    finally:
        progress.close()


def _cell_model(cell: Cell, model: dict[str, Any], log) -> tuple[dict[str, Any], str | None]:
    """The checkpoint the cell reads (its engine's derived kind, if any), and why it could not be made."""
    try:
        kind = ENGINES[cell.engine].derived_checkpoint(cell.settings)
        return derived.cell_model(kind, model, log), None
    except Exception as exc:  # making a derived checkpoint broke: this cell fails, the matrix goes on
        return model, f"could not make this cell's checkpoint: {type(exc).__name__}: {exc}"


def _execute(cell: Cell, job: Job, executor: Executor) -> dict[str, Any]:
    """Run the job; add what the engine said only in its log, and the root cause of a failure."""
    result = executor.run(job)
    facts = log_facts(cell, job.log_path)
    if facts:
        result["engine_log"] = facts
    cause = ENGINES[cell.engine].failure_cause(facts)
    if result["status"] != "ok" and cause and cause not in (result.get("reason") or ""):
        result["reason"] = f"{result.get('reason') or 'failed'}; root cause: {cause}"
    return result


def log_facts(cell: Cell, log_path: Path) -> dict[str, Any]:
    """What the cell's engine printed only in its log (runner.engines: log_facts), or {}."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    return ENGINES[cell.engine].log_facts(text)


def refresh_log_facts(folder: Path, cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The result with engine_log re-read from its log (the patterns may be newer than the run)."""
    facts = log_facts(cell, cell_paths(folder, cell)["log_path"])
    if facts and facts != result.get("engine_log"):
        result = {**result, "engine_log": facts}
        write_json_atomic(cell_paths(folder, cell)["result_path"], result)
    return result


def _where(cell: Cell, cpus: tuple[int, ...]) -> str:
    return f"GPU {','.join(map(str, cell.gpus))}" if cell.gpus else cpuset.named(cpus)
