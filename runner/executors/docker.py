"""Docker executor: one container per cell, named after it, on exactly the cell's GPUs.

`docker run` gets the engine's image (built beforehand, see runner/build.py),
a name unique to this runner (the cell id and a token of the run), a label naming
the run folder,
`--gpus '"device=0,1"'` with the cell's devices (none for CPU cells; those get
`--cpuset-cpus` with the run's CPU set instead, or a serving cell's server with
its part of it, the containers that time it getting the rest), the IPC /
shared-memory settings multi-GPU engines need, the model mounted read-only, and
the run folder and the store's folder of converted models read-write, all at the
same paths as on the host (so the cell's spec needs no rewriting), the invoking
user's uid:gid (result files stay yours) and no network. The container's stdout
and stderr go to the cell's log. A timeout or an interrupt kills and removes the
container; it is removed in every case. A runner killed before it could do that
leaves its containers labelled with the folder: the next runner on the folder
(which holds the folder's lock, runner/run_lock.py) removes them first.

Before any GPU cell (and before building a GPU image for it): Docker must be able
to hand this host's GPUs to containers, and the host's driver must run the image's
CUDA (runner/cuda_compat.py); otherwise those cells end at once with one line
saying what is missing and how to fix it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import interrupts
from runner.build import ensure_images, flavour_of, image_key, image_spec, no_image_reason
from runner.cpuset import format_cpus
from runner.cuda_compat import driver_problem
from runner.errors import UserError
from runner.images import load_specs, offers_cuda
from runner.job import ExecutorOptions, Job
from runner.results import failure, not_started, outcome

if TYPE_CHECKING:
    from runner.expand import Cell

CONTAINER_ENTRYPOINTS = "/bench/entrypoints"
SHM_SIZE = "16g"
FOLDER_LABEL = "inference-matrix.run-folder"
REMOVE_AGAIN_S = 1.0  # an interrupted tool's container is removed again after this, in case its create landed late


def daemon_problem() -> str | None:
    """None if a Docker daemon answers, else why not (one line)."""
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return "the docker CLI is not installed"
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer within 20 s"
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"docker version exited {done.returncode}"
    return None


def require_daemon() -> None:
    problem = daemon_problem()
    if problem:
        raise UserError(
            f"Docker daemon not reachable ({problem}); start it (sudo systemctl start docker, or dockerd &) "
            "or run with --executor local"
        )


TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit (nvidia-container-toolkit), run `sudo nvidia-ctk runtime configure "
    "--runtime=docker` and restart Docker; check with `docker run --rm --gpus all debian:bookworm-slim nvidia-smi`"
)


def docker_runtimes() -> set[str]:
    """The container runtimes the Docker daemon knows (docker info), empty if it does not say."""
    done = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=20,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return set(json.loads(done.stdout or "{}"))
    except ValueError:
        return set()


def gpu_container_problem(gpus_listed: dict | None, runtimes: set[str], hook_installed: bool) -> tuple[str, str] | None:
    """Why Docker cannot run GPU cells here, as (status, one line with the fix), or None when it can.

    No NVIDIA GPU on the host: the cells are "not run here" (unsupported), as under the local executor.
    GPUs, but Docker cannot hand them to containers (no nvidia runtime and no NVIDIA hook for --gpus):
    a setup to fix, so the cells fail, saying how.
    """
    if not gpus_listed:
        return "unsupported", "this host has no NVIDIA GPU (nvidia-smi lists none): GPU cells need one"
    if "nvidia" in runtimes or hook_installed:
        return None
    return "failed", f"Docker cannot give containers this host's GPUs: {TOOLKIT_FIX}"


def driver_problems(keys: set[tuple], specs: dict, drivers: list[str], cuda: str | None = None) -> dict[tuple, str]:
    """Image key -> why this host's driver cannot run that GPU image's CUDA (runner.cuda_compat), from the
    image's description (on torch's CUDA `cuda` where it offers that), so that no image is built for cells that
    could not run."""
    problems = {}
    for key in keys:
        if key[1] != "gpu" or key[:2] not in specs:
            continue
        spec = image_spec(specs, key, cuda)
        others = [c for c in (specs[key[:2]].cuda, *specs[key[:2]].cuda_variants) if c != spec.cuda]
        problem = driver_problem(f"images/{key[0]}'s gpu image", spec.cuda, spec.cuda_of, drivers, others)
        if problem:
            problems[key] = problem
    return problems


def host_gpu_container_problem(listed: dict | None) -> tuple[str, str] | None:
    """gpu_container_problem for this host (its GPUs as runner.host.gpu_models lists them) and its Docker daemon."""
    if not listed:
        return gpu_container_problem(listed, set(), False)
    return gpu_container_problem(listed, docker_runtimes(), shutil.which("nvidia-container-runtime-hook") is not None)


def image_exists(tag: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, stdin=subprocess.DEVNULL)
    return done.returncode == 0


def gpus_argument(gpus: list[int]) -> str:
    """The --gpus value Docker wants for a device list: the quotes are part of the value."""
    return f'"device={",".join(str(g) for g in gpus)}"'


def container_name(cell_id: str, run_token: str) -> str:
    """Unique per runner: two runners (on two folders) may run the same cell at once."""
    return f"inference-matrix-{cell_id}-{run_token}"


def model_mount(model: dict[str, Any]) -> Path:
    """The folder to mount for the model: the checkpoint, or a hub cache repo (snapshots link to blobs)."""
    path = Path(model["path"])
    if model.get("source") == "hub" and path.parent.name == "snapshots":
        return path.parent.parent
    return path


def run_command(job: Job, image: str, run_folder: Path, run_token: str) -> list[str]:
    cell, model = job.cell, job.spec["model"]
    gpus = cell["gpus"]
    command = ["docker", "run", "--name", container_name(cell["id"], run_token), "--network", "none"]
    command += ["--label", f"{FOLDER_LABEL}={run_folder}"]
    command += ["--user", f"{os.getuid()}:{os.getgid()}"]
    if gpus:
        command += ["--gpus", gpus_argument(gpus)]
    if job.cpus:  # a CPU cell: its engine's threads and workers run on exactly these CPUs
        command += ["--cpuset-cpus", format_cpus(job.cpus)]
    command += ["--ipc", "host"] if len(gpus) > 1 else ["--shm-size", SHM_SIZE]
    environment = {
        **job.env,
        # inside the container the cell's GPUs are numbered from 0
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpus))),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in environment.items():
        command += ["--env", f"{name}={value}"]
    mount = model_mount(model)
    command += ["--volume", f"{mount}:{mount}:ro", "--volume", f"{run_folder}:{run_folder}:rw"]
    if model.get("derived_dir"):  # where engines keep what they convert from the checkpoint
        command += ["--volume", f"{model['derived_dir']}:{model['derived_dir']}:rw"]
    script = f"{CONTAINER_ENTRYPOINTS}/{job.entrypoint}"
    return [*command, image, "python3", script, "--spec", str(job.spec_path), "--output", str(job.child_result_path)]


def tool_command(job: Job, image: str, args: list[str], run_folder: Path, name: str, cell_container: str) -> list[str]:
    """`docker run` of a tool's image in the cell container's network namespace (its 127.0.0.1), as the
    invoking user, with the model read-only and the run folder read-write at their host paths, on the job's
    client CPUs where it has them (a CPU serving cell's, apart from its server's). Not HF_HUB_OFFLINE: AIPerf
    0.13 then looks a tokenizer's local path up in the hub's cache, and fails (the network is the cell's: none)."""
    mount = model_mount(job.spec["model"])
    cpus = ["--cpuset-cpus", format_cpus(job.client_cpus)] if job.client_cpus else []
    return [
        "docker", "run", "--rm", "--name", name, "--network", f"container:{cell_container}",
        "--label", f"{FOLDER_LABEL}={run_folder}", "--user", f"{os.getuid()}:{os.getgid()}", *cpus,
        "--env", "HOME=/tmp", "--env", "PYTHONUNBUFFERED=1",
        "--volume", f"{mount}:{mount}:ro", "--volume", f"{run_folder}:{run_folder}:rw",
        image, *args,
    ]  # fmt: skip


def _remove(name: str) -> None:
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, stdin=subprocess.DEVNULL)


def _remove_beside(name: str, client: subprocess.Popen | None) -> None:
    """Remove a tool's container, its docker client first where it still runs (interrupted): a client left running
    (its own session) could create the container after the removal, and one whose cell's container is gone stays
    created, never started, never removed. A create request the dead client had sent can still land: once more
    after a moment."""
    if client is None or client.poll() is not None:
        _remove(name)
        return
    client.kill()
    client.wait()
    _remove(name)
    time.sleep(REMOVE_AGAIN_S)
    _remove(name)


def leftover_containers(run_folder: Path) -> list[str]:
    """Containers an earlier runner on this folder started and never removed (it was killed)."""
    done = subprocess.run(
        ["docker", "ps", "--all", "--filter", f"label={FOLDER_LABEL}={run_folder}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return [name for name in done.stdout.split() if name]


class DockerExecutor:
    name = "docker"

    def __init__(
        self,
        images: dict[tuple, str],
        run_folder: Path,
        run_token: str | None = None,
        tools: dict[str, str] | None = None,
        gpu_problem: tuple[str, str] | None = None,
        driver_problems: dict[tuple, str] | None = None,
    ):
        self.images = images  # runner.build.image_key of a cell -> tag
        self.tools = tools or {}  # tool name -> its image's tag
        self.gpu_problem = gpu_problem  # (status, why) when Docker cannot run GPU cells on this host
        self.driver_problems = driver_problems or {}  # image key -> why the host's driver cannot run that image
        self.run_folder = run_folder
        self.run_token = run_token or secrets.token_hex(4)
        self.interrupted = False
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def environment(self, cell: Cell) -> str:
        image = self.images.get(image_key(cell.engine, cell.gpus, cell.engine_version))
        return f"image {image}" if image else f"no {flavour_of(cell.gpus)} image"

    def stop_all(self) -> None:
        with self._lock:
            self.interrupted = True
            names = list(self._names)
        for name in names:
            subprocess.run(["docker", "kill", name], capture_output=True, stdin=subprocess.DEVNULL)

    def run(self, job: Job) -> dict[str, Any]:
        cell = job.cell
        if cell["gpus"] and self.gpu_problem:  # at once, with the fix: not a CUDA error deep in an engine's log
            status, reason = self.gpu_problem
            job.log_path.write_text(f"not run: {reason}\n")
            return failure(cell, job.spec["model"], job.spec["workload"], status, reason)
        key = image_key(cell["engine"], cell["gpus"], cell.get("engine_version"))
        if key in self.driver_problems:  # at once: not "driver too old" deep in the engine's log
            reason = self.driver_problems[key]
            job.log_path.write_text(f"not run: {reason}\n")
            return failure(cell, job.spec["model"], job.spec["workload"], "failed", reason)
        image = self.images.get(key)
        if image is None:
            reason = no_image_reason(cell["engine"], flavour_of(cell["gpus"]))
            job.log_path.write_text(f"not run: {reason}\n")
            return failure(cell, job.spec["model"], job.spec["workload"], "unsupported", reason)
        name = container_name(cell["id"], self.run_token)
        command = run_command(job, image, self.run_folder, self.run_token)
        job.child_result_path.unlink(missing_ok=True)
        timed_out = False
        with open(job.log_path, "w") as log:
            log.write("$ " + " ".join(shlex.quote(a) for a in command) + "\n")
            log.flush()
            with self._lock:
                if self.interrupted:
                    return not_started(job)
                self._names.add(name)
                # its own session: a terminal's Ctrl-C reaches the runner, which stops the container itself
                # (the docker client would forward the signal to the engine, which then dies without a result)
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            try:
                process.wait(timeout=job.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                subprocess.run(["docker", "kill", name], capture_output=True, stdin=subprocess.DEVNULL)
                process.wait()
        _remove(name)
        self._names.discard(name)
        return outcome(job, process.returncode, timed_out=timed_out, interrupted=self.interrupted)

    def run_tool(self, job: Job, tool: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """The tool's image, running its executable of the same name, beside the cell's running container."""
        return self._beside(job, tool, self.tools[tool], [tool, *args], log_path, timeout_s)

    def _beside(
        self, job: Job, label: str, image: str, argv: list[str], log_path: Path, timeout_s: float
    ) -> int | None:
        """A container of image running argv beside the cell's, killed on a timeout, removed in every case."""
        cell_container = container_name(job.cell["id"], self.run_token)
        name = f"{cell_container}-{label}-{secrets.token_hex(2)}"
        command = tool_command(job, image, argv, self.run_folder, name, cell_container)
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(shlex.quote(a) for a in command) + "\n")
            log.flush()
            process = None
            try:
                with interrupts.held(), self._lock:  # a stop lands once the client is recorded (runner.interrupts)
                    if self.interrupted:
                        return None
                    self._names.add(name)
                    process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
                subprocess.run(["docker", "kill", name], capture_output=True, stdin=subprocess.DEVNULL)
                process.wait()
            finally:  # an interrupt raised in the wait (a serving sweep waits on the main thread) included
                _remove_beside(name, process)
                self._names.discard(name)
        return code

    def run_in_cell(self, job: Job, script: str, args: list[str], log_path: Path, timeout_s: float) -> int | None:
        """The script in the cell's running container (docker exec), with the image's Python; where the job has
        client CPUs of its own (a CPU serving cell), in a container of the cell's image beside it on those CPUs
        instead, as the load generator runs (docker exec would run it on the server's CPUs)."""
        if job.client_cpus:
            image = self.images[image_key(job.cell["engine"], job.cell["gpus"], job.cell.get("engine_version"))]
            argv = ["python3", f"{CONTAINER_ENTRYPOINTS}/{script}", *args]
            return self._beside(job, script.removesuffix(".py").replace("_", "-"), image, argv, log_path, timeout_s)
        container = container_name(job.cell["id"], self.run_token)
        command = ["docker", "exec", container, "python3", f"{CONTAINER_ENTRYPOINTS}/{script}", *args]
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(shlex.quote(a) for a in command) + "\n")
            log.flush()
            if self.interrupted:
                return None
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                return process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:  # the container goes with the cell; the client goes now
                process.kill()
                process.wait()
                return None


def from_options(options: ExecutorOptions) -> DockerExecutor:
    """A docker executor once the daemon answers and every image the cells need exists (built if allowed)."""
    require_daemon()
    for name in leftover_containers(options.run_folder):  # this runner holds the folder: none of them is live
        print(f"removing container {name}, left in this run folder by a runner that was killed", flush=True)
        _remove(name)
    from runner.host import gpu_models

    gpu_cells = any(c.gpus for c in options.cells)
    listed = gpu_models() if gpu_cells else None  # nvidia-smi, once: for the container check and the driver check
    gpu_problem = host_gpu_container_problem(listed) if gpu_cells else None
    if gpu_problem:
        print(f"GPU cells will not run in containers here: {gpu_problem[1]}", flush=True)
    specs = load_specs()
    gpu_keys = {image_key(c.engine, c.gpus, c.engine_version) for c in options.cells if c.gpus}
    cuda = options.build_options["gpu"].cuda if "gpu" in options.build_options else None
    for engine in sorted({key[0] for key in gpu_keys if key[:2] in specs and not offers_cuda(specs[key[:2]], cuda)}):
        print(f"note: --cuda {cuda}: images/{engine}'s gpu image does not offer it; it runs CUDA "
              f"{specs[(engine, 'gpu')].cuda}", flush=True)  # fmt: skip
    drivers = sorted({gpu["driver"] for gpu in (listed or {}).values()})
    too_old = {} if gpu_problem or not gpu_keys else driver_problems(gpu_keys, specs, drivers, cuda)
    for problem in sorted(set(too_old.values())):
        print(f"GPU cells will not run here: {problem}", flush=True)
    # GPU images are built only where GPU cells can run
    needed = {
        key
        for c in options.cells
        if not (c.gpus and gpu_problem) and (key := image_key(c.engine, c.gpus, c.engine_version)) not in too_old
    }
    needed |= {(tool, "cpu") for tool in options.tools}  # a tool runs on the CPU beside any cell
    tags = ensure_images(needed, specs, options.build_options, options.build_missing, exists=image_exists)
    missing = [tool for tool in options.tools if (tool, "cpu") not in tags]
    if missing:
        raise UserError(f"no image for {', '.join(missing)}: images/<name>/image.yaml with a cpu flavour")
    tools = {tool: tags[(tool, "cpu")] for tool in options.tools}
    return DockerExecutor(tags, options.run_folder, tools=tools, gpu_problem=gpu_problem, driver_problems=too_old)
