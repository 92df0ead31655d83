"""Run serving cells: one server per cell, started once, swept through every concurrency level, stopped.

The cell's child is its engine's server entrypoint (entrypoints/serve_<engine>.py
over entrypoints/serving.py), run by the executor like any cell, in a thread:
it prepares the model, starts the server and writes ``<child result>.ready.json``
once the server answers. The runner then runs the load generator
(runner/serving/loadgen.py) once per level, in the matrix's order, and asks the
child to stop by creating ``<child result>.stop``. Each level is a result of its
own inside the cell's: a level whose load generator failed, or that found the
server gone, is failed with the reason (the server's last error line), and the
levels before it keep their numbers. An interrupt (Ctrl-C, SIGTERM, the runner's
own ``timeout``) likewise keeps the levels measured before it: the server and the
load generator are stopped, the level in flight is failed as interrupted, and
the cell's result is written before the run ends. The cell's memory per level is
the peak of the child's memory timeline within the level's time. The server's
whole log (``<child result>.server.log.gz``) is filed as serving/<cell>/server.log.gz.

The executor runs the load generator beside the cell (Executor.run_tool): the
local executor as a local process (.venv/aiperf, or --loadgen), the docker
executor as a container of images/aiperf in the server container's network
namespace, so the server's 127.0.0.1 is the load generator's and cells keep
``--network none``. A CPU cell's server runs on part of the run's CPU set and
the load generator, and the engine's own benchmark, on the rest
(cpuset.split_for_clients), so that neither waits for the other's CPUs.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from runner.cpuset import format_cpus, split_for_clients
from runner.engines import ENGINES
from runner.engines.base import ServerReference
from runner.expand import Cell, block_cells
from runner.host import hardware_of
from runner.job import Executor, Job
from runner.matrix import Matrix, serving_engine
from runner.provenance import tool_version
from runner.results import failure, read_result
from runner.reuse import measured_with
from runner.serving.agreement import add_pooled, level_folder
from runner.serving.loadgen import (
    AIPERF_VERSION,
    aiperf_arguments,
    error_lines,
    level_metrics,
    level_requests,
    level_seed,
    reference_sweep,
    server_figures,
    server_reads,
)
from runner.serving.resume import plan
from runner.session import _cell_model, cell_paths
from runner.shared import RESULT_SCHEMA_VERSION, SAFETY_ENV, write_json_atomic

READY_POLL_S = 0.5
# an interrupted sweep's wait for the server's child to stop its server (SIGINT, 20 s, then SIGKILL) and write its
# result, before the executor stops it
STOP_WAIT_S = 60
SERVER_GONE = "the server had stopped"  # a level's reason; the server's own words are added after


def _own_figures(engine: str, sweep: dict[str, Any]) -> dict[str, Any]:
    """The figures of the server's own metrics AIPerf reads at each level: the engine's, where the sweep asks for
    them (serving.server_metrics); none, and AIPerf reads no metrics, otherwise."""
    return ENGINES[engine].server.own_figures if sweep.get("server_metrics") else {}


class SweepInterrupted(KeyboardInterrupt):
    """The run was interrupted during a serving cell: carries the cell's result so far (its measured levels)."""

    def __init__(self, result: dict[str, Any]):
        super().__init__()
        self.result = result


def serving_cell_id(name: str, settings: dict[str, Any], gpus: tuple[int, ...], matrix: Matrix) -> str:
    assert matrix.serving is not None
    identity = {
        "mode": "serving",
        "engine": name,
        "settings": settings,
        "gpus": list(gpus),
        "model": matrix.model.identity(),
        "sweep": matrix.serving.sweep.identity(),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"serve-{name}-{digest[:12]}"


def serving_cells(matrix: Matrix) -> list[Cell]:
    """The matrix's serving cells, in order (none without a serving: section)."""
    if matrix.serving is None:
        return []
    cells: dict[str, Cell] = {}
    for name, block in matrix.serving.engines.items():
        engine = serving_engine(name)
        assert engine is not None  # validated by the matrix
        make_id = lambda n, settings, gpus, *_: serving_cell_id(n, settings, gpus, matrix)  # noqa: E731
        for cell in block_cells(matrix, name, block, engine, "serving.engines", make_id):
            cells.setdefault(cell.id, cell)
    return list(cells.values())


def server_label(cell: Cell) -> list[str]:
    """The cell's label: its engine's, then its server's settings where they are not the defaults."""
    server = ENGINES[cell.engine].server
    assert server is not None
    extra = [f"{k}={cell.settings[k]}" for k, s in server.settings.items() if cell.settings[k] != s.default]
    return [*cell.label, *extra]


def sweep_workload(matrix: Matrix) -> dict[str, Any]:
    assert matrix.serving is not None
    return {"kind": "serving", **matrix.serving.sweep.__dict__, "levels": list(matrix.serving.sweep.levels)}


def make_serving_job(folder: Path, cell: Cell, matrix: Matrix, model: dict[str, Any], cpus: tuple[int, ...]) -> Job:
    paths = cell_paths(folder, cell)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = ENGINES[cell.engine]
    spec = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": {**cell.to_json(), "label": server_label(cell), "mode": "serving"},
        "model": model,
        "workload": sweep_workload(matrix),
        "recorded_env_prefixes": list(engine.recorded_env_prefixes),
    }
    paths["spec_path"].write_text(json.dumps(spec, indent=2) + "\n")
    assert engine.server is not None
    server_cpus, client_cpus = ((), ()) if cell.gpus else split_for_clients(cpus)
    return Job(
        spec=spec,
        spec_path=paths["spec_path"],
        child_result_path=folder / "cells" / f".{cell.id}.child.json",
        result_path=paths["result_path"],
        log_path=paths["log_path"],
        entrypoint=engine.server.entrypoint,
        timeout_s=cell.timeout_s,
        env={**SAFETY_ENV, **engine.cell_env},
        cpus=server_cpus,
        client_cpus=client_cpus,
    )


def _set_aside(artifacts: Path) -> None:
    """An earlier run's files of a level measured again go under earlier/ beside the levels, not mixed with the new."""
    if artifacts.exists():
        aside = artifacts.parent / "earlier" / f"{artifacts.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        artifacts.rename(aside)


def _wait_ready(ready_path: Path, server: threading.Thread) -> dict[str, Any] | None:
    while server.is_alive():
        if ready_path.exists():
            return json.loads(ready_path.read_text())
        time.sleep(READY_POLL_S)
    return None


def _peak_between(timeline: list[list[float]], start: float, end: float) -> float | None:
    inside = [value for at, value in timeline if start <= at <= end]
    return max(inside) if inside else None


def _check_level(metrics: dict[str, Any], level: int, sweep: dict[str, Any]) -> str | None:
    """Why a level's numbers do not stand (errors, missing requests, a length other than asked), or None."""
    wanted = level_requests(sweep, level)
    if metrics["errors"]:
        return f"{metrics['errors']:.0f} of {metrics['errors'] + (metrics['requests'] or 0):.0f} requests failed"
    # bounded by time (duration_s), a level sends what fits in it: at least one request per slot
    least = min(wanted, level) if sweep.get("duration_s") else wanted
    if metrics["requests"] is None or metrics["requests"] < least:
        return f"{metrics['requests'] or 0:.0f} of {least} requests completed"
    wrong = metrics.get("output_tokens_not_as_asked")
    if wrong:
        shown = ", ".join(f"{got} for {asked}" for asked, got in metrics["output_tokens_not_as_asked_first"])
        return f"{wrong} of {metrics['requests']:.0f} requests returned other than the tokens they asked for ({shown})"
    if sweep.get("length_range_ratio"):  # each request asked for its own length: the check above is the one
        return None if wrong == 0 else "AIPerf wrote no per-request records to check each request's length by"
    low, high = metrics["output_tokens_min"], metrics["output_tokens_max"]
    if low != sweep["new_tokens"] or high != sweep["new_tokens"]:
        return f"requests returned {low:g}-{high:g} tokens, not exactly {sweep['new_tokens']}"
    return None


class ServingRun:
    """Sweeps one server: the executor runs its child in a thread, the load generator runs here."""

    def __init__(self, folder: Path, executor: Executor, aiperf: str, log=print):
        self.folder, self.executor, self.aiperf, self.log = folder, executor, aiperf, log  # aiperf: where it ran

    def run(self, cell: Cell, job: Job, kept: list[dict[str, Any]] | tuple = ()) -> dict[str, Any]:
        """Start the server, sweep the levels not in kept (an earlier run's, runner.serving.resume), stop it."""
        sweep = job.spec["workload"]
        extras = ENGINES[cell.engine].server.extras(sweep["new_tokens"])  # what each request carries to get N
        outcome: list[dict[str, Any]] = []
        server = threading.Thread(target=lambda: outcome.append(self.executor.run(job)), daemon=True)
        job.child_result_path.unlink(missing_ok=True)
        ready_path, stop_path = (Path(f"{job.child_result_path}{suffix}") for suffix in (".ready.json", ".stop"))
        for path in (ready_path, stop_path):
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + job.timeout_s
        levels: list[dict[str, Any]] = list(kept)  # then filled by the sweep as each level ends
        ready = None
        server.start()
        try:
            ready = _wait_ready(ready_path, server)
            if ready:
                done = {lv["level"] for lv in kept}
                left = [level for level in sweep["levels"] if level not in done]
                self.log(f"[{cell.id}] server ready on port {ready['port']}; sweeping levels {left}")
                served = ready.get("model") or job.spec["model"]["name"]  # the name its requests carry
                self._sweep(cell, job, f"http://127.0.0.1:{ready['port']}", served, extras, server, deadline, levels)
        except KeyboardInterrupt:
            # the load generator is gone with its process group or container (the executor's wait saw to it). The
            # server's child is asked to stop as at a sweep's end, by the stop file: it stops its server and writes
            # its result, the memory timeline of the levels measured included, whatever the executor (a container
            # stopped by the executor gets SIGKILL, and its result with it). Only a child that does not end in
            # STOP_WAIT_S is stopped by the executor (at once where the server was not ready yet: it reads the stop
            # file only once serving). Then the levels measured so far go up to be written.
            if ready:
                stop_path.touch()
                server.join(timeout=STOP_WAIT_S)  # the runner ignores further signals once stopping (cli._interrupt)
            self.executor.stop_all()  # and nothing else starts
            server.join()
            own = _child_result(job.child_result_path)  # the executor's outcome keeps only why it stopped
            if own is not None and outcome:
                outcome[0] = {**own, "exit_code": outcome[0].get("exit_code")}
            result = self._result(cell, job, outcome, levels, extras, ready_path, stop_path)
            measured = [lv["level"] for lv in levels if lv["status"] == "ok"]
            result["status"] = "failed"
            result["reason"] = "interrupted: the run was stopped " + (
                f"at level {levels[-1]['level']}; levels {measured} kept" if levels else "before any level ran"
            )
            raise SweepInterrupted(result) from None
        stop_path.touch()
        server.join()
        result = self._result(cell, job, outcome, levels, extras, ready_path, stop_path)
        if result["status"] == "ok" and (not levels or any(lv["status"] != "ok" for lv in levels)):
            bad = next((lv for lv in levels if lv["status"] != "ok"), None)
            result["status"] = "failed"
            result["reason"] = f"level {bad['level']}: {bad['reason']}" if bad else "no level ran"
        elif result["status"] != "ok" and levels:
            # the server stopped during the sweep: the levels it left unserved say how, in its own words
            for level in levels:
                if level["status"] != "ok" and level.get("reason", "").endswith(SERVER_GONE):
                    level["reason"] += f" ({result['reason']})"
            result["reason"] = f"{result['reason']} (after levels {[lv['level'] for lv in levels]})"
        return result

    def _result(
        self,
        cell: Cell,
        job: Job,
        outcome: list[dict[str, Any]],
        levels: list[dict[str, Any]],
        extras: dict[str, Any],
        ready_path: Path,
        stop_path: Path,
    ) -> dict[str, Any]:
        """The cell's result from its child's and the levels: each level's memory peak, the load generator."""
        for path in (ready_path, stop_path):
            path.unlink(missing_ok=True)
        sweep = job.spec["workload"]
        result = outcome[0] if outcome else failure(job.cell, job.spec["model"], sweep, "failed", "no result")
        server_log = Path(f"{job.child_result_path}.server.log.gz")  # the server's whole log, kept beside the levels
        if server_log.exists():
            kept = self.folder / "serving" / cell.id / "server.log.gz"
            kept.parent.mkdir(parents=True, exist_ok=True)
            server_log.replace(kept)
            result.setdefault("server", {})["log"] = str(kept.relative_to(self.folder))
        timeline = result.pop("memory_timeline", None) or []
        for level in levels:
            if "kept_from" not in level:  # a kept level keeps the peak its own server's timeline gave it
                level["peak_memory_mib"] = _peak_between(timeline, level["started"], level["ended"])
        order = {level: i for i, level in enumerate(sweep["levels"])}
        result["levels"] = sorted(levels, key=lambda lv: order.get(lv["level"], len(order)))
        result["loadgen"] = {"name": "aiperf", "version": AIPERF_VERSION, "executable": self.aiperf}
        if job.cpus:  # a CPU cell: where its server ran, and where the load generators that timed it ran
            result["cpus"] = {"server": format_cpus(job.cpus), "load_generators": format_cpus(job.client_cpus)}
        result["exact_length"] = {  # how each request asked for exactly N tokens (levels check they came back)
            "request_extras": extras,
            "how": ENGINES[cell.engine].server.forced_length,
        }
        return result

    def _sweep(
        self,
        cell: Cell,
        job: Job,
        url: str,
        served: str,
        extras: dict[str, Any],
        server: threading.Thread,
        deadline: float,
        levels: list[dict[str, Any]],
    ) -> None:
        """Each level in turn, appended to levels as it ends (an interrupted level too, then re-raised)."""
        sweep = job.spec["workload"]
        model = job.spec["model"]
        reference = ENGINES[cell.engine].server.reference
        connections = ENGINES[cell.engine].server.connections
        own = _own_figures(cell.engine, sweep)
        kept = {lv["level"] for lv in levels}  # an earlier run's levels (runner.serving.resume)
        for level in sweep["levels"]:
            if level in kept:
                continue
            entry: dict[str, Any] = {"level": level}
            if not server.is_alive():
                levels.append({**entry, "status": "failed", "reason": SERVER_GONE, "started": 0, "ended": 0})
                continue
            artifacts = level_folder(self.folder, cell.id, level)
            _set_aside(artifacts)
            artifacts.mkdir(parents=True, exist_ok=True)
            args = aiperf_arguments(
                url, served, model["path"], level, sweep, extras, artifacts, connections, server_metrics=bool(own)
            )
            entry["command"] = ["aiperf", *args]
            entry["started"] = time.time()
            bound = f" or {sweep['duration_s']:g} s, whichever ends first" if sweep.get("duration_s") else ""
            self.log(f"[{cell.id}] level {level}: {level_requests(sweep, level)} requests{bound}")
            log_path = artifacts / "aiperf.log"
            try:
                code = self.executor.run_tool(job, "aiperf", args, log_path, max(deadline - time.monotonic(), 1))
                if code is None:
                    entry.update(status="timeout", reason="the cell's timeout_s ran out during this level")
                elif code != 0:
                    said = error_lines(log_path.read_text(errors="replace")) if log_path.exists() else ""
                    raise RuntimeError(f"aiperf exited with code {code}: {said} (log: {log_path})")
                else:
                    entry["metrics"] = level_metrics(artifacts)
                    if own:  # what the server counted itself over the same window
                        entry["server_metrics"] = server_figures(artifacts, own)
                        entry["server_reads"] = server_reads(artifacts)  # what reading them cost the server
                    problem = _check_level(entry["metrics"], level, sweep)
                    entry.update(status="failed" if problem else "ok", reason=problem)
                    if not problem and reference is not None:
                        self._fidelity(job, reference, url, served, extras, connections, entry, artifacts, deadline)
            except KeyboardInterrupt:
                if entry.get("status") == "ok":  # measured; at most its engine's own benchmark was cut short
                    if reference is not None and "output_tokens_per_s" not in entry.get("reference", {}):
                        entry["reference"] = {"tool": reference.name, "error": "interrupted: the run was stopped"}
                else:
                    entry.update(status="failed", reason="interrupted: the run was stopped during this level")
                entry["ended"] = time.time()
                levels.append(entry)
                raise
            except Exception as exc:
                entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            entry["ended"] = time.time()
            if entry["status"] != "ok" and not server.is_alive():
                entry["reason"] += f"; {SERVER_GONE}"
            levels.append(entry)
            self.log(
                f"[{cell.id}] level {level} {entry['status']}" + (f": {entry['reason']}" if entry["reason"] else "")
            )
            if entry["status"] == "timeout":
                break

    def _fidelity(
        self,
        job: Job,
        reference: ServerReference,
        url: str,
        served: str,
        extras: dict[str, Any],
        connections: str,
        entry: dict[str, Any],
        artifacts: Path,
        deadline: float,
    ) -> None:
        """The engine's own serving benchmark after the measured level, on the same server (entry["reference"]).

        With serving.fidelity_runs N > 1, the load generator and the engine's benchmark then each run N - 1 times
        more, alternating, each run with prompts of its own (under ``run<k>/`` beside the level's files): each
        tool's own spread from run to run, beside the gap between them, says whether a gap in median TTFT is the
        tools' or only how one closed-loop run fell out. The row stays the level's first run. Then both tools'
        requests of every run are pooled into one median TTFT each, with an interval (reference["pooled_ttft"]).
        """
        sweep, level = job.spec["workload"], entry["level"]
        sent = entry["metrics"]["requests"]
        found = self._reference(job, reference, url, served, level, artifacts, deadline, sent, run=1)
        found.update(_ratios(entry["metrics"], found))
        entry["reference"] = found
        runs = sweep.get("fidelity_runs", 1)
        if "error" in found:
            return
        own = _own_figures(job.cell["engine"], sweep)  # AIPerf's further runs read the server as its first did
        own_ttft = own.get("ttft_ms_avg")  # each run's mean TTFT by the server itself, beside both tools' (agreement)
        if runs < 2:
            add_pooled(found, artifacts, level, own_ttft)
            return
        found["runs"] = [_pair(entry["metrics"], found)]
        run = 2
        try:
            for run in range(2, runs + 1):
                where = artifacts / f"run{run}"
                where.mkdir(parents=True, exist_ok=True)
                args = aiperf_arguments(url, served, job.spec["model"]["path"], level, sweep, extras, where,
                                        connections, run=run, server_metrics=bool(own))  # fmt: skip
                log_path = where / "aiperf.log"
                code = self.executor.run_tool(job, "aiperf", args, log_path, max(deadline - time.monotonic(), 1))
                if code != 0:
                    said = error_lines(log_path.read_text(errors="replace")) if log_path.exists() else ""
                    found["runs_error"] = f"run {run}: aiperf exited with code {code}: {said}"
                    break
                ours = level_metrics(where)
                problem = _check_level(ours, level, sweep)
                if problem:
                    found["runs_error"] = f"run {run}: {problem}"
                    break
                theirs = self._reference(job, reference, url, served, level, where, deadline, ours["requests"], run=run)
                if "error" in theirs:
                    found["runs_error"] = f"run {run}: {reference.name} failed: {theirs['error']}"
                    break
                found["runs"].append(_pair(ours, theirs))
        except KeyboardInterrupt:
            found["runs_error"] = f"run {run}: interrupted: the run was stopped"
            raise
        except Exception as exc:  # the level was measured: a later run's trouble is the check's, not the level's
            found["runs_error"] = f"run {run}: {type(exc).__name__}: {exc}"
        finally:
            found.update(_spread(found["runs"]))
            add_pooled(found, artifacts, level, own_ttft)

    def _reference(
        self,
        job: Job,
        reference: ServerReference,
        url: str,
        served: str,
        level: int,
        artifacts: Path,
        deadline: float,
        sent: float | None,
        run: int = 1,
    ) -> dict[str, Any]:
        """The engine's own serving benchmark on the same level and server: its throughput and median TTFT (as
        many requests as the load generator sent at that level and run)."""
        sweep, model = reference_sweep(job.spec["workload"], sent), job.spec["model"]
        result = artifacts / "reference.json"
        seed = level_seed(level, run)
        args = reference.arguments(url, served, model["path"], level, sweep, str(result), seed)
        log_path = artifacts / "reference.log"
        found: dict[str, Any] = {"tool": reference.name, "command": [reference.script, *args]}
        code = self.executor.run_in_cell(job, reference.script, args, log_path, max(deadline - time.monotonic(), 1))
        if code != 0 or not result.exists():
            said = error_lines(log_path.read_text(errors="replace")) if log_path.exists() else ""
            return {**found, "error": f"exit {code}: {said}"}
        figures = json.loads(result.read_text())
        return {
            **found,
            "output_tokens_per_s": figures.get(reference.output_key),
            "ttft_ms_p50": figures.get(reference.ttft_key),
        }


def _child_result(child_result_path: Path) -> dict[str, Any] | None:
    """The server child's own result (its command, versions, memory timeline), if it wrote one."""
    try:
        found = json.loads(child_result_path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _ratios(metrics: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The row's figures over its engine's own benchmark's: output throughput and median TTFT."""
    found = {}
    for ours, theirs, name in (
        ("output_tokens_per_s", "output_tokens_per_s", "output_ratio"),
        ("ttft_ms_p50", "ttft_ms_p50", "ttft_p50_ratio"),
    ):
        if metrics.get(ours) and reference.get(theirs):
            found[name] = round(metrics[ours] / reference[theirs], 4)
    return found


def _pair(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """One fidelity run: the load generator's and the engine's benchmark's output tok/s and median TTFT."""
    keys = ("output_tokens_per_s", "ttft_ms_p50")
    return {"ours": {k: ours.get(k) for k in keys}, "theirs": {k: theirs.get(k) for k in keys}}


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the fidelity runs: each tool's median TTFT and output (min, median, max) and the ratios of medians."""
    found: dict[str, Any] = {}
    for key in ("ttft_ms_p50", "output_tokens_per_s"):
        for side in ("ours", "theirs"):
            values = sorted(r[side][key] for r in runs if r[side].get(key))
            if values:
                found[f"{key}_{side}"] = [values[0], statistics.median(values), values[-1]]
        if f"{key}_ours" in found and f"{key}_theirs" in found:
            name = "ttft_p50_ratio_of_medians" if key == "ttft_ms_p50" else "output_ratio_of_medians"
            found[name] = round(found[f"{key}_ours"][1] / found[f"{key}_theirs"][1], 4)
    return found


def run_serving_cells(
    matrix: Matrix,
    cells: list[Cell],
    model: dict[str, Any],
    folder: Path,
    executor: Executor,
    aiperf: str,
    cpus: tuple[int, ...],
    log=print,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run every serving cell, one at a time (each server takes its GPUs or CPUs alone).

    A cell whose earlier result stands (runner.serving.resume) is kept; one cut short sweeps only the levels
    it lacks; force measures every level again."""
    results = []
    runner = ServingRun(folder, executor, aiperf, log)
    try:
        for cell in cells:
            results.append(_run_one(matrix, cell, model, folder, executor, runner, cpus, log, force))
    except KeyboardInterrupt:  # stop the running server and load generator (processes or containers)
        executor.stop_all()
        raise
    return results


def _run_one(
    matrix: Matrix,
    cell: Cell,
    model: dict[str, Any],
    folder: Path,
    executor: Executor,
    runner: ServingRun,
    cpus: tuple[int, ...],
    log,
    force: bool = False,
) -> dict[str, Any]:
    """One serving cell: its checkpoint, its job, what it keeps of an earlier result, the sweep, its result."""
    cell_model, problem = _cell_model(cell, model, log)
    job = make_serving_job(folder, cell, matrix, cell_model, cpus)
    wanted = measured_with(
        cell_model,
        executor.name,
        executor.environment(cell),
        hardware_of(cell.gpus),
        format_cpus(job.cpus) if job.cpus else None,
    )
    wanted["loadgen"] = runner.aiperf
    previous = read_result(job.result_path)
    levels = job.spec["workload"]["levels"]
    kept = plan(previous, wanted, levels, force)
    if kept.keep and previous is not None:
        log(f"[{cell.id}] kept earlier ok result ({'; '.join(server_label(cell))}): the same checkpoint, engine "
            "environment, executor, hardware and load generator")  # fmt: skip
        return previous
    if kept.kept:
        log(f"[{cell.id}] keeping levels {[lv['level'] for lv in kept.kept]} of the earlier result "
            f"({previous and previous.get('status')}); measuring the rest")  # fmt: skip
    elif previous is not None:
        log(f"[{cell.id}] measuring again: {kept.why}")
    log(f"[{cell.id}] serving {cell.software}: {'; '.join(server_label(cell))}")
    started = time.time()
    if problem:
        result = failure(job.cell, cell_model, job.spec["workload"], "failed", problem)
    elif previous is not None and {lv["level"] for lv in kept.kept} == set(levels):
        # every level measured already (the earlier run stopped after them, in a fidelity run): nothing to serve
        result = {**previous, "status": "ok", "reason": None, "levels": kept.kept}
    else:
        try:
            result = runner.run(cell, job, kept.kept)
        except SweepInterrupted as stop:  # the levels measured before the interrupt are kept
            _write(job, stop.result, started, executor, log, wanted)
            raise
    return _write(job, result, started, executor, log, wanted)


def _write(
    job: Job, result: dict[str, Any], started: float, executor: Executor, log, wanted: dict[str, Any]
) -> dict[str, Any]:
    result.update(wall_s=time.time() - started, executor=executor.name, runner=tool_version(), measured_with=wanted)
    write_json_atomic(job.result_path, result)
    job.child_result_path.unlink(missing_ok=True)
    log(f"[{job.cell['id']}] {result['status']}" + (f": {result['reason']}" if result.get("reason") else ""))
    return result
