"""Ray executor: each cell on a node of a Ray cluster, run there by that node's local or docker executor.

The runner is Ray's driver (``--ray-address`` or RAY_ADDRESS). Each cell becomes
one Ray actor asking for the cell's GPUs (``num_gpus`` = its GPU count) and one
CPU, so Ray places it on a node with that many free GPUs and runs disjoint cells
at once across nodes; nothing here schedules. A CPU cell computes with every CPU
of its node, so it asks for as many CPUs as the cluster's largest node has: it
runs alone on one of those nodes. An actor rather than a plain task, so the
driver can tell a running cell to stop (Ctrl-C, a driver-side timeout) and still
get its row and log back. On the node the actor writes the spec into a scratch
run folder, remaps the cell to the GPUs Ray gave it, drops the OMP_NUM_THREADS
that Ray sets in its workers (the engine sees the node's own environment, as
with the local executor), checks the GPUs with the GPU guard, and runs the
node's inner executor (``--ray-inner local``: the node's Python; ``docker``: the
engine's image, built there if missing); it returns the result, the log and the
node's facts. The driver writes them into the run folder and records the node
in ``result["node"]``, with the hardware it measured on.

Every node runs the submitting checkout's runner and entrypoints (Ray ships them
as the job's working_dir). The model must be at the same path on every node (the
same store path, or a shared filesystem); a synthetic model missing there is
built into the node's store. Ray is imported only when this executor is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.cpuset import available, format_cpus
from runner.errors import UserError
from runner.job import ExecutorOptions, Job
from runner.results import failure, not_started

if TYPE_CHECKING:
    from runner.expand import Cell

REPO = Path(__file__).resolve().parents[2]
INNER = ("local", "docker")
RUN_SLACK_S = 300  # past the cell's timeout, the driver stops waiting for the node (its own kill comes first)
STOP_GRACE_S = 30  # after a stop, how long a cell gets to report before its actor is killed
CONNECT_TIMEOUT_S = 10  # how long the cluster's address may take to accept a connection
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
# a node's card kind: Ray gives each GPU node accelerator_type:<kind> (H100, H200, ...), or `ray start --resources`
ACCELERATOR_TYPE = "accelerator_type:"
# how much of it a cell asks for: any amount only such nodes have (Ray's own accelerator_type option asks 0.001)
CARD_SHARE = 0.001
# what Ray ships to each node as the job's working_dir: the runner, its entrypoints and image folders
SHIPPED_EXCLUDES = [
    ".git", ".venv*", "venv/", "results/", "runs/", "tests/", "test-artifacts/", "*.pyc", "__pycache__/",
]  # fmt: skip
RAY_EXCLUDES = "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"  # Ray's own default excludes (.git, .venv, venv, ...)


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            "--executor ray needs Ray on this machine: pip install 'inference-matrix[ray]' (ray==2.60.0)"
        ) from None
    return ray


def connect(address: str | None) -> None:
    """Join the cluster at address (else RAY_ADDRESS) as its driver, shipping this checkout to its nodes."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError(
            "--executor ray: give the cluster's address with --ray-address HOST:PORT or RAY_ADDRESS "
            "(`ray start --head` prints it)"
        )
    ray = _ray()
    if ray.is_initialized():
        return
    problem = _unreachable(address)
    if problem:
        raise UserError(
            f"--ray-address {address}: no Ray cluster answered there ({problem}); start one with "
            "`ray start --head` on a node, or give its address"
        )
    runtime_env = {"working_dir": str(REPO), "excludes": SHIPPED_EXCLUDES}
    # SHIPPED_EXCLUDES holds Ray's own default excludes too: without Ray's, Ray does not warn on every run that
    # it no longer ships .git (a line before any of the runner's own)
    ours = RAY_EXCLUDES not in os.environ  # a user's own setting stays
    os.environ.setdefault(RAY_EXCLUDES, "")
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # ConnectionError, or Ray's own error types for a refused or absent cluster
        raise UserError(
            f"--ray-address {address}: no Ray cluster answered there ({type(exc).__name__}: {str(exc)[:200]}); "
            "start one with `ray start --head` on a node, or give its address"
        ) from None
    finally:
        if ours:
            os.environ.pop(RAY_EXCLUDES, None)


def _unreachable(address: str) -> str | None:
    """Why nothing listens at a HOST:PORT address (Ray's own connect retries for minutes); None if it answers
    or the address is of another form (auto, ray://...)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


# ---- on a node -------------------------------------------------------------------------------------


def node_facts() -> dict[str, Any]:
    """What a node is, read on the node: its host, Ray node id, CPU, GPUs and the Python cells run with."""
    import ray

    from runner.executors.local import LocalExecutor
    from runner.host import cpu_description, gpu_models

    local = LocalExecutor()
    node_id = ray.get_runtime_context().get_node_id()
    resources = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node_id), {})
    return {
        "hostname": socket.gethostname(),
        "node_id": node_id,
        # the node's own resources, as `ray start --resources` named them (a card kind, a node's name)
        "custom_resources": sorted(k for k in resources if k not in BUILTIN_RESOURCES and not k.startswith("node:")),
        "cpu": f"CPU: {cpu_description()}",
        "cpus": format_cpus(available()),
        "gpu_models": {str(k): v for k, v in (gpu_models() or {}).items()},
        "python": local.python,
        "packages": local._packages(),
    }


class CellOnNode:
    """One cell on the node Ray chose (a Ray actor): prepare, run, and stop when told to."""

    def __init__(self, inner: str, options: dict[str, Any]):
        self.inner_name = inner
        self.options = options
        self.folder = Path(tempfile.mkdtemp(prefix="inference-matrix-ray-"))
        self.lock = threading.Lock()
        self.stopped = False
        self.inner = None
        self.job: Job | None = None
        self.node: dict[str, Any] = {}

    def prepare(self, spec: dict[str, Any], entrypoint: str, env: dict[str, str], timeout_s: int) -> dict | None:
        """Set the cell up here; None when it may run, else its result (a failed row with the reason)."""
        import ray

        from runner.gpu_guard import GpuGuard
        from runner.host import hardware_of

        gpus = tuple(int(g) for g in ray.get_gpu_ids()) if spec["cell"]["gpus"] else ()
        if _thread_cap_is_rays():
            os.environ.pop("OMP_NUM_THREADS")
        spec = {**spec, "cell": {**spec["cell"], "gpus": list(gpus)}}  # the GPUs Ray gave this cell here
        cpus = () if gpus else available()
        self.job = _scratch_job(self.folder, spec, entrypoint, env, timeout_s, cpus)
        facts = node_facts()
        self.node = {
            "hostname": facts["hostname"],
            "ray_node_id": facts["node_id"],
            "custom_resources": facts["custom_resources"],
            "gpus": list(gpus),
            "executor": self.inner_name,
            "measured_with": {"hardware": hardware_of(gpus), "cpus": format_cpus(cpus) if cpus else None},
        }
        problem = _model_problem(spec["model"], facts["hostname"])
        if problem is None:
            try:
                self.inner = _inner_executor(self.inner_name, self.options, self.folder, spec["cell"])
            except UserError as exc:
                problem = f"the {self.inner_name} executor cannot run on node {facts['hostname']}: {exc}"
        if problem is None:
            problem = GpuGuard(log=lambda line: None).wait_until_free(gpus)
        if problem:
            return _failed(spec, problem)
        self.node["measured_with"]["engine_environment"] = self.inner.environment(_cell_of(spec["cell"]))
        return None

    def run(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """The cell's result, its log text and the node's facts; the scratch folder is removed."""
        with self.lock:
            if self.stopped:
                result = not_started(self.job)
                self.job.log_path.write_text("")
        if not self.stopped:
            result = self.inner.run(self.job)
        log = self.job.log_path.read_text(errors="replace") if self.job.log_path.exists() else ""
        shutil.rmtree(self.folder, ignore_errors=True)
        return result, log, self.node

    def stop(self) -> None:
        """Stop the running cell (its inner executor kills it, its row says interrupted) and start none."""
        with self.lock:
            self.stopped = True
        if self.inner is not None:
            self.inner.stop_all()


def _thread_cap_is_rays() -> bool:
    """Whether this worker's OMP_NUM_THREADS is Ray's own: Ray sets it to a worker's CPU share (one, for a cell)
    where the node's environment has none, which would hold a CPU cell's torch to one thread. The node's
    environment is its raylet's, the worker's parent."""
    if "OMP_NUM_THREADS" not in os.environ:
        return False
    try:
        parent = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return not any(entry.startswith(b"OMP_NUM_THREADS=") for entry in parent)


def _cell_of(cell: dict[str, Any]) -> Cell:
    from runner.expand import Cell

    return Cell(
        cell["id"], cell["engine"], cell["settings"], tuple(cell["gpus"]), cell["timeout_s"],
        cell.get("batch_size", 1), cell.get("engine_version"), cell.get("card"),
    )  # fmt: skip


def _scratch_job(
    folder: Path, spec: dict[str, Any], entrypoint: str, env: dict[str, str], timeout_s: int, cpus: tuple[int, ...]
) -> Job:
    import json

    cell_id = spec["cell"]["id"]
    for sub in ("spec", "cells", "logs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec" / f"{cell_id}.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return Job(
        spec=spec,
        spec_path=spec_path,
        child_result_path=folder / "cells" / f".{cell_id}.child.json",
        result_path=folder / "cells" / f"{cell_id}.json",
        log_path=folder / "logs" / f"{cell_id}.log",
        entrypoint=entrypoint,
        timeout_s=timeout_s,
        env=env,
        cpus=cpus,
    )


def _model_problem(model: dict[str, Any], hostname: str) -> str | None:
    """None when the model is at its path on this node (a synthetic one is built there if missing)."""
    path = Path(model["path"])
    if path.exists():
        return None
    if model.get("source") == "synthetic":
        from runner.models import synthetic

        made = synthetic.materialise(model["name"], path.parents[1], log=lambda line: None)
        if made.resolve() == path:
            return None
    return (
        f"the model is not at {path} on node {hostname}: every node needs the same model store path "
        "(a shared filesystem, or a copy there)"
    )


def _inner_executor(name: str, options: dict[str, Any], folder: Path, cell: dict[str, Any]):
    from runner.executors import docker, local

    built = ExecutorOptions(run_folder=folder, cells=[_cell_of(cell)], **options)
    return (docker if name == "docker" else local).from_options(built)


def _failed(spec: dict[str, Any], reason: str) -> dict[str, Any]:
    return {**failure(spec["cell"], spec["model"], spec["workload"], "failed", reason), "exit_code": None}


# ---- on the driver ---------------------------------------------------------------------------------


class RayExecutor:
    name = "ray"
    places_cells = True  # Ray decides where and how many cells run at once; the runner schedules nothing

    def __init__(self, inner: str, inner_options: dict[str, Any]):
        ray = _ray()
        self.ray = ray
        self.inner = inner
        self.inner_options = inner_options
        self.tools: dict[str, str] = {}
        self.interrupted = False
        self._lock = threading.Lock()
        self._running: dict[Any, str] = {}  # actor -> "queued" (waiting for its resources) or "running"
        self._actor = ray.remote(CellOnNode)
        self.nodes = self._probe()

    def _probe(self) -> list[dict[str, Any]]:
        """Each live node's facts and resources, read by a zero-CPU task pinned to it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(node_facts)
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        refs = [
            probe.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote()
            for n in alive
        ]
        facts = self.ray.get(refs, timeout=300)
        return [{**f, "resources": n.get("Resources", {})} for f, n in zip(facts, alive, strict=True)]

    def describe(self) -> list[str]:
        """One line per node: its host, Ray node id, CPUs and GPUs."""
        lines = []
        for n in self.nodes:
            gpus = "".join(f", GPU {i}: {m['name']}" for i, m in n["gpu_models"].items())
            cpu, gpu = n["resources"].get("CPU", 0), n["resources"].get("GPU", 0)
            lines.append(f"{n['hostname']} ({n['node_id'][:8]}): {cpu:g} CPU, {gpu:g} GPU{gpus}")
        return lines

    def _needs(self, cell_gpus: list[int] | tuple[int, ...], card: str | None = None) -> dict[str, float]:
        """Ray resources of a cell: one CPU (a CPU cell: as many as the largest node has), its GPU count, and a
        sliver of its card kind's accelerator_type resource (as Ray's own accelerator_type option asks), which only
        nodes of that kind have."""
        cpus = max([n["resources"].get("CPU", 0) for n in self.nodes] + [1.0]) if not cell_gpus else 1.0
        needs = {"CPU": float(cpus), **({"GPU": float(len(cell_gpus))} if cell_gpus else {})}
        if card and cell_gpus:
            needs[f"{ACCELERATOR_TYPE}{card}"] = CARD_SHARE
        return needs

    def _fits(self, node: dict[str, Any], cell_gpus, card: str | None = None) -> bool:
        return all(node["resources"].get(k, 0) >= v for k, v in self._needs(cell_gpus, card).items())

    def environment(self, cell: Cell) -> str:
        return f"ray ({self.inner} on the node that runs it)"

    def placement(self, cell: Cell, previous: dict[str, Any] | None) -> dict[str, Any]:
        """What the cell would be measured with (hardware, CPU set, environment) on a node that can run it: the
        previous result's, when such a node is in the cluster (so it may be reused), else the first fitting node's."""
        candidates = [self._measured_on(n, cell) for n in self.nodes if self._fits(n, cell.gpus, cell.card)]
        recorded = (previous or {}).get("measured_with") or {}
        for candidate in candidates:
            if all(recorded.get(k) == v for k, v in candidate.items()):
                return candidate
        return candidates[0] if candidates else {"hardware": "no node of the Ray cluster fits this cell"}

    def _measured_on(self, node: dict[str, Any], cell: Cell) -> dict[str, Any]:
        if not cell.gpus:
            hardware, cpus = node["cpu"], node["cpus"]
        else:
            models = [node["gpu_models"][i] for i in sorted(node["gpu_models"], key=int)][: len(cell.gpus)]
            names = " + ".join(m["name"] for m in models)
            drivers = ", ".join(sorted({m["driver"] for m in models}))
            hardware, cpus = f"GPUs: {names}; driver {drivers}", None
        if self.inner == "local":
            from runner.executors.local import local_environment

            environment = local_environment(node["python"], node["packages"], cell)
        else:  # the image's tag is computed the same way on every node
            environment = _docker_environment(cell, self.inner_options)
        return {"hardware": hardware, "cpus": cpus, "engine_environment": environment}

    def run(self, job: Job) -> dict[str, Any]:
        cell = job.cell
        card = cell.get("card")
        if card and cell["gpus"] and not any(f"{ACCELERATOR_TYPE}{card}" in n["resources"] for n in self.nodes):
            reason = f"no node of the Ray cluster has {card} cards (resource {ACCELERATOR_TYPE}{card})"
            job.log_path.write_text(f"not run: {reason}\n")
            return {**_failed(job.spec, reason), "status": "unsupported"}
        needs = self._needs(cell["gpus"], card)
        if not any(self._fits(n, cell["gpus"], card) for n in self.nodes):
            kind = f" of {card}" if card and cell["gpus"] else ""
            cpus = f"{needs['CPU']:g} CPU(s)"
            reason = f"no node of the Ray cluster has {len(cell['gpus']) or 'no'} GPU(s){kind} and {cpus} for this cell"
            job.log_path.write_text(f"not run: {reason}\n")
            return _failed(job.spec, reason)
        custom = {k: v for k, v in needs.items() if k not in ("CPU", "GPU")}
        with self._lock:
            if self.interrupted:
                return not_started(job)
            actor = self._actor.options(
                num_cpus=needs["CPU"], num_gpus=needs.get("GPU", 0), resources=custom or None, max_concurrency=2,
                max_restarts=0,
            ).remote(self.inner, self.inner_options)  # fmt: skip
            self._running[actor] = "queued"
        try:
            result, log, node = self._drive(actor, job)
        finally:
            with self._lock:
                self._running.pop(actor, None)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        job.log_path.write_text(log)
        result["cell"] = cell  # the matrix's cell; the GPUs it had on its node are in result["node"]
        if node:
            result["node"] = node
        return result

    def _drive(self, actor, job: Job) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Prepare the cell on its node (waiting while Ray queues it), run it, bound the wait for its result."""
        ray = self.ray
        try:
            refused = ray.get(actor.prepare.remote(job.spec, job.entrypoint, job.env, job.timeout_s))
            if refused is not None:
                return refused, "", {}
            with self._lock:
                if self.interrupted:
                    return not_started(job), "", {}
                self._running[actor] = "running"
            ref = actor.run.remote()
            done, _ = ray.wait([ref], timeout=job.timeout_s + RUN_SLACK_S)
            if not done:
                actor.stop.remote()
                done, _ = ray.wait([ref], timeout=STOP_GRACE_S)
            if not done:
                waited = job.timeout_s + RUN_SLACK_S
                reason = f"timeout: the node did not report within {waited} s; its actor was killed"
                return {**_failed(job.spec, reason), "status": "timeout"}, "", {}
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # its node died, or the actor was killed (an interrupt)
            if self.interrupted:
                reason = "interrupted: the run was stopped while this cell was queued or running on its node"
            else:
                reason = f"the Ray node running this cell was lost: {type(exc).__name__}: {_first_line(exc)}"
            return _failed(job.spec, reason), "", {}
        except ray.exceptions.RayError as exc:  # a bug on the node, or Ray's own trouble: a row, not a crash
            return _failed(job.spec, f"the cell's Ray actor failed: {type(exc).__name__}: {_first_line(exc)}"), "", {}

    def stop_all(self) -> None:
        """Queued cells are dropped at once; running ones are told to stop (their rows come back), and any actor
        still there after STOP_GRACE_S is killed."""
        with self._lock:
            self.interrupted = True
            running = dict(self._running)
        for actor, phase in running.items():
            with contextlib.suppress(Exception):
                if phase == "queued":
                    self.ray.kill(actor)
                else:
                    actor.stop.remote()
        threading.Thread(target=self._kill_after_grace, args=(list(running),), daemon=True).start()

    def _kill_after_grace(self, actors: list) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            with self._lock:
                if not any(a in self._running for a in actors):
                    return
            time.sleep(0.5)
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)

    def run_tool(self, job: Job, tool: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        raise UserError("serving cells do not run on the ray executor yet")

    def run_in_cell(self, job: Job, script: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        raise UserError("serving cells do not run on the ray executor yet")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _docker_environment(cell: Cell, inner_options: dict[str, Any]) -> str:
    from runner.build import image_key, image_spec
    from runner.images import image_tag, load_specs

    specs = load_specs()
    key = image_key(cell.engine, cell.gpus, cell.engine_version)
    if key[:2] not in specs:
        return "no image"
    build = inner_options["build_options"][key[1]]
    return f"image {image_tag(image_spec(specs, key, build.cuda), build.base_image, build.build_args)}"


def card_kinds() -> list[str]:
    """The card kinds of the cluster's live GPU nodes."""
    ray = _ray()
    kinds = {
        key.removeprefix(ACCELERATOR_TYPE)
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("GPU")
        for key in node.get("Resources", {})
        if key.startswith(ACCELERATOR_TYPE)
    }
    return sorted(kinds)


def _one_card_kind_or_cards(cells: list[Cell]) -> None:
    """GPU cells without a card kind may land on any GPU node: refuse where those are of several kinds, since
    numbers from different cards must not share a table or a baseline."""
    if not any(c.gpus and not c.card for c in cells):
        return
    kinds = card_kinds()
    if len(kinds) > 1:
        raise UserError(
            f"--executor ray: the cluster has GPU nodes of {len(kinds)} card kinds ({', '.join(kinds)}) and this "
            f"matrix names none: add `cards: [{', '.join(kinds)}]` to it (each GPU cell runs on each, one table "
            "per card), or list the kinds it should run on"
        )


def from_options(options: ExecutorOptions) -> RayExecutor:
    inner, address = options.ray_inner, options.ray_address
    if options.tools:
        raise UserError("serving cells do not run on the ray executor yet; run them with --executor local or docker")
    if inner not in INNER:
        raise UserError(f"--ray-inner {inner}: choose one of {', '.join(INNER)}")
    connect(address)
    _one_card_kind_or_cards(options.cells)
    inner_options = {
        "python": options.python,
        "build_options": options.build_options,
        "build_missing": options.build_missing,
    }
    return RayExecutor(inner, inner_options)
