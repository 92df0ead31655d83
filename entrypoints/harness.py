"""Shared in-environment harness: load (timed), warm up, timed repetitions, memory, one JSON result.

Every engine script (run_<engine>.py) defines an Engine class with
``check()``, ``load()``, ``tokenize(text)``, ``generate(prompt_ids, new_tokens)``,
``synchronize()``, ``allocator_peak()`` and ``versions()``, and optionally
``prepare()`` (model conversion, before memory sampling starts; returns what it
did), ``compute_threads()`` (the CPU threads it computes with and where that number
comes from, when torch's count is not the one), ``details()`` (what the engine
reports about the loaded model), ``close()`` (free the model) and ``reference()``
(the engine's own benchmark tool on the same model and settings, run after the
measurement and memory sampling have ended);
this module does the rest the same way for all of them:

* clocks are read only after the engine synchronises its device;
* warm-up runs are timed and reported apart from the measured repetitions;
* Avg Tok/s is new tokens over generation time, median of the repetitions, with
  min/max/stdev; time to first token (prefill) and the decode rate are apart;
* memory: NVML device-level used memory (what nvidia-smi shows) sampled on every
  GPU of the cell from before load to the end, plus the engine allocator's own
  peak where it has one; on CPU the peak RSS of the cell's process tree (engine
  workers included), labelled as such; a GPU cell whose NVML cannot be read
  reports no memory and why (kind ``unmeasured``), never the host's RSS;
* the CPUs the cell may run on (its affinity, which the executor pinned) and the
  threads the engine computes with are recorded (``threads``);
* the result is schema-versioned and written atomically (temp file, rename),
  both from shared.py, the one file the runner loads too; a spec written by a
  runner of another schema version fails the cell saying so.

This file runs inside the engine's environment (a container or a venv) and
imports nothing from the host-side runner; it names no engine (what an engine
records, such as its own environment variables, comes in the cell's spec).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import platform
import resource
import socket
import statistics
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import RESULT_SCHEMA_VERSION, SAFETY_ENV, cpu_model, write_json_atomic

# Variables that change what runs on any CUDA engine; the cell's spec adds its engine's prefixes.
RECORDED_ENV_PREFIXES = ("CUDA_LAUNCH_BLOCKING", "PYTORCH_CUDA_ALLOC_CONF")
PROMPT_FILE = Path(__file__).with_name("prompt.txt")


class CellUnsupported(Exception):
    """This setting cannot run in this environment (an engine or package not installed, no CUDA GPU, another
    engine release): status ``unsupported``, shown as "not run here: <message>", not counted as a failure."""


def refuse_cpu_stand_in(gpus: list[int], device_seen: bool, why_not: str) -> None:
    """A GPU cell whose engine sees no GPU here is not run, rather than measured on the CPU under a GPU row."""
    if gpus and not device_seen:
        raise CellUnsupported(f"the cell asks for GPU(s) {list(gpus)} and {why_not}")


class CellInvalid(Exception):
    """This cell cannot work anywhere as given (settings that contradict each other or the workload, a
    malformed spec): a failed row whose reason is the message, with the fix."""


@dataclass
class Timing:
    """One generate() call: wall time from start to last token, and to the first token if known."""

    total_s: float
    first_token_s: float | None
    new_tokens: int


def summarise(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def process_tree_rss_mib(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (some engines run their model in
    worker processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    pages = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                pages += int(statm.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySampler:
    """Peak device memory via NVML on the cell's GPUs, sampled in a thread; on CPU, the peak RSS
    of the cell's process tree (the process and every worker it starts)."""

    CPU_INTERVAL_S = 0.05  # reading /proc costs CPU time the engine competes for: sample less often

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.devices: list[dict[str, Any]] = []
        self.error: str | None = None
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self.tree_peak_mib = 0.0

    def start(self) -> None:
        if os.environ.get("CUDA_VISIBLE_DEVICES", "") in ("", "-1"):
            if os.path.isdir("/proc"):
                self._thread = threading.Thread(target=self._run_cpu, daemon=True)
                self._thread.start()
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            visible = _visible_devices()
            self._handles = [_nvml_handle(pynvml, entry) for entry in visible]
        except Exception as exc:  # no NVML: report why, keep measuring speed
            self.error = f"NVML unavailable: {exc}"
            return
        for index, handle in zip(visible, self._handles, strict=True):
            used = self._used(handle)
            name = self._nvml.nvmlDeviceGetName(handle)
            total = self._nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20
            self.devices.append(
                {"device": index, "name": name, "total_mib": total, "used_before_mib": used, "peak_used_mib": used}
            )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self, handle: Any) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def _run_cpu(self) -> None:
        while True:
            self.tree_peak_mib = max(self.tree_peak_mib, process_tree_rss_mib(os.getpid()))
            if self._stop.wait(self.CPU_INTERVAL_S):
                return

    def sample(self) -> None:
        for device, handle in zip(self.devices, self._handles, strict=False):
            device["peak_used_mib"] = max(device["peak_used_mib"], self._used(handle))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join()
            self.sample()
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.error:  # a GPU cell whose device memory could not be read: no number rather than a wrong one
            return {"kind": "unmeasured", "peak_mib": None, "reason": self.error, "host_peak_rss_mib": rss_mib}
        if self.devices:
            return {
                "kind": "nvml-device-used",
                "peak_mib": sum(d["peak_used_mib"] for d in self.devices),
                "devices": self.devices,
                "host_peak_rss_mib": rss_mib,
            }
        return {
            "kind": "process-tree-peak-rss",
            "peak_mib": max(self.tree_peak_mib, rss_mib),
            "tree_peak_mib": self.tree_peak_mib,
            "own_peak_rss_mib": rss_mib,
            "nvml_error": self.error,
        }


def _visible_devices() -> list[str]:
    return [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]


def _nvml_handle(pynvml: Any, entry: str) -> Any:
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def driver_info() -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        return {"driver": pynvml.nvmlSystemGetDriverVersion(), "nvml_cuda": pynvml.nvmlSystemGetCudaDriverVersion()}
    except Exception:
        return {}


CONTEXT_ROUNDING = 256


def torch_cuda_peak(torch: Any) -> dict[str, Any]:
    """An engine on PyTorch's CUDA allocator: its own peak, beside the NVML device figure (torch passed in:
    this module imports no engine's packages)."""
    return {
        "kind": "torch.cuda",
        "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
        "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
    }


def cell_cpus() -> set[int]:
    """The CPUs this cell may run on (the executor pinned them)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def context_length(chosen: int | None, workload: dict[str, Any]) -> int:
    """An engine's context size: the cell's choice, else prompt + new tokens rounded up to 256."""
    if chosen is not None:
        return chosen
    return round_up(workload["prompt_tokens"] + workload["new_tokens"], CONTEXT_ROUNDING)


def prompt_ids(engine: Any, prompt_tokens: int, batch_size: int) -> list[list[int]]:
    """Exactly prompt_tokens ids of real text (BOS included), the same for every engine."""
    text = PROMPT_FILE.read_text()
    ids = engine.tokenize(text)
    while len(ids) < prompt_tokens:
        ids = ids + engine.tokenize(text)[1:]
    return [ids[:prompt_tokens] for _ in range(batch_size)]


class RepeatedLogFilter(logging.Handler):
    """Root-logger handler: print each distinct warning once, count repeats (bitsandbytes logs one per matmul)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip().splitlines()[0][:300] if record.getMessage().strip() else ""
        self.counts[message] = self.counts.get(message, 0) + 1
        if self.counts[message] == 1:
            print(f"{record.levelname} {record.name}: {message}", file=sys.stderr, flush=True)

    def summary(self) -> list[str]:
        return [f"log: {m}" + (f" (x{n})" if n > 1 else "") for m, n in self.counts.items()]


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "outofmemory" in text.replace(" ", "") or "out of memory" in text


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    first = message[0] if message else ""
    return f"{type(exc).__name__}: {first}"[:500]


def check_spec(spec: dict[str, Any]) -> None:
    """The spec comes from a runner that reads this harness's results, or the cell fails saying so."""
    found = spec.get("schema_version")
    if found != RESULT_SCHEMA_VERSION:
        raise CellInvalid(
            f"the runner wrote a schema {found!r} spec and this harness writes schema {RESULT_SCHEMA_VERSION}: "
            "the engine's image or entrypoints come from another checkout; rebuild the image (make image-ENGINE)"
        )


def _prepare(engine: Any, spec: dict[str, Any], result: dict[str, Any]) -> None:
    engine.check()
    _check_engine_version(engine, spec["cell"])
    if hasattr(engine, "prepare"):
        t0 = time.perf_counter()
        result["prepare"] = engine.prepare()
        result["metrics"]["prepare_s"] = time.perf_counter() - t0


def _check_engine_version(engine: Any, cell: dict[str, Any]) -> None:
    """A cell that names an engine release runs only on that release (the docker executor builds one image each)."""
    wanted = cell.get("engine_version")
    if not wanted:
        return
    found = str(engine.versions().get("engine_version", "")).split(" ")[0]
    if found != wanted:
        raise CellUnsupported(
            f"the cell asks for {cell.get('software', cell['engine'])} {wanted} and this environment has "
            f"{found or 'none'}; run it with the docker executor (one image per engine_version) or install that release"
        )


def _measure(engine: Any, spec: dict[str, Any], result: dict[str, Any]) -> None:
    workload = spec["workload"]
    new_tokens = workload["new_tokens"]
    t0 = time.perf_counter()
    engine.load()
    engine.synchronize()
    result["metrics"]["load_s"] = time.perf_counter() - t0
    prompts = prompt_ids(engine, workload["prompt_tokens"], workload["batch_size"])
    warmups = [engine.generate(prompts, new_tokens) for _ in range(workload["warmup"])]
    result["metrics"]["warmup_s"] = [w.total_s for w in warmups]
    runs, stopped = _repetitions(engine, prompts, workload)
    for run in runs:
        if run.new_tokens != new_tokens:
            raise RuntimeError(f"engine produced {run.new_tokens} new tokens, expected exactly {new_tokens}")
    result["metrics"].update(_rates(runs, new_tokens, workload["batch_size"]))
    result["metrics"]["repetitions_run"] = len(runs)
    result["metrics"]["repetitions_stopped"] = stopped
    result["metrics"]["allocator"] = engine.allocator_peak()
    if hasattr(engine, "details"):
        result["engine_details"] = engine.details()


def _repetitions(engine: Any, prompts: list[list[int]], workload: dict[str, Any]) -> tuple[list[Timing], str]:
    """The timed runs: `repetitions` of them, then (with max_repetitions) more while their tok/s vary by more
    than target_cv_pct, as asv and pytest-benchmark repeat until stable; and why they stopped."""
    new_tokens = workload["new_tokens"]
    runs = [engine.generate(prompts, new_tokens) for _ in range(workload["repetitions"])]
    most = workload.get("max_repetitions")
    if not most:
        return runs, "fixed count"
    target = workload.get("target_cv_pct") or 5.0
    while _cv_pct([new_tokens / r.total_s for r in runs]) > target:
        if len(runs) >= most:
            return runs, f"max_repetitions {most} reached with the spread above {target:g}%"
        runs.append(engine.generate(prompts, new_tokens))
    return runs, f"spread at or under {target:g}%"


def _cv_pct(values: list[float]) -> float:
    """Coefficient of variation in %; infinite for a single value (one run says nothing about its spread)."""
    if len(values) < 2:
        return float("inf")
    return 100 * statistics.stdev(values) / statistics.fmean(values)


def _rates(runs: list[Timing], new_tokens: int, batch: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "generation_s": summarise([r.total_s for r in runs]),
        "tokens_per_s": summarise([new_tokens / r.total_s for r in runs]),
        "total_tokens_per_s": summarise([batch * new_tokens / r.total_s for r in runs]),
    }
    if all(r.first_token_s is not None for r in runs):
        metrics["ttft_s"] = summarise([r.first_token_s for r in runs])
        metrics["decode_tokens_per_s"] = summarise([(new_tokens - 1) / (r.total_s - r.first_token_s) for r in runs])
    return metrics


def run(engine_class: type, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark cell and write its JSON result.")
    parser.add_argument("--spec", required=True, type=Path, help="cell spec JSON written by the runner")
    parser.add_argument("--output", required=True, type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) prints the Python stack to the cell's log
    spec = json.loads(args.spec.read_text())
    result: dict[str, Any] = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": spec["cell"],
        "model": spec["model"],
        "workload": spec["workload"],
        "status": "ok",
        "reason": None,
        "metrics": {},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    logged = RepeatedLogFilter()
    logging.getLogger().addHandler(logged)
    sampler = MemorySampler()
    engine = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_spec(spec)
            engine = engine_class(spec)
            _prepare(engine, spec, result)  # conversions run before memory sampling starts
            if spec.get("probe_bandwidth"):
                result["bandwidth"] = probe_bandwidth()  # its own process, done before the sampler starts
            sampler.start()
            _measure(engine, spec, result)
        except Exception as exc:
            _record_failure(result, exc)
        result["memory"] = sampler.stop()
        result["threads"] = threads_used(engine)
        if engine is not None and result["status"] == "ok":
            _reference(engine, result)
    result["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught}) + logged.summary()
    result["environment"] = _environment(engine, spec.get("recorded_env_prefixes") or [])
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(args.output, result)
    print(f"[{spec['cell']['id']}] {result['status']}: {result['reason'] or _headline(result)}", flush=True)
    return 0 if result["status"] == "ok" else 1


def probe_bandwidth(timeout_s: float = 180) -> dict[str, Any]:
    """The visible GPUs' copy bandwidth (bandwidth.py, in a process of its own); never fails the cell."""
    import subprocess

    script = Path(__file__).resolve().parent / "bandwidth.py"
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
        lines = done.stdout.strip().splitlines()
        return (
            json.loads(lines[-1])
            if lines
            else {"error": f"bandwidth.py exited {done.returncode}: {done.stderr[-300:]}"}
        )
    except (subprocess.TimeoutExpired, ValueError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _record_failure(result: dict[str, Any], exc: BaseException) -> None:
    if isinstance(exc, CellUnsupported):
        result["status"] = "unsupported"
    else:
        result["status"] = "oom" if _is_oom(exc) else "failed"
    result["reason"] = str(exc) if isinstance(exc, CellUnsupported | CellInvalid) else _one_line(exc)
    result["traceback"] = traceback.format_exc()[-4000:]


def _reference(engine: Any, result: dict[str, Any]) -> None:
    """Free the model, then run the engine's own benchmark tool, if it has one; never fails the cell."""
    try:
        if hasattr(engine, "close"):
            engine.close()
        if hasattr(engine, "reference"):
            result["reference"] = engine.reference(result)
    except Exception as exc:
        result["reference"] = {"error": _one_line(exc)}


def _headline(result: dict[str, Any]) -> str:
    tps = result["metrics"]["tokens_per_s"]["median"]
    memory = result["memory"]
    if memory["peak_mib"] is None:
        return f"{tps:.2f} tok/s, memory not measured ({memory['reason']})"
    return f"{tps:.2f} tok/s, peak {memory['peak_mib']:.0f} MiB ({memory['kind']})"


def threads_used(engine: Any) -> dict[str, Any]:
    """The CPUs this cell may run on and the threads its engine computes with: the engine's own count
    (``compute_threads()``) where it has one, else torch's intra-op threads where torch is loaded, else
    OMP_NUM_THREADS; None where none of them says."""
    found: dict[str, Any] = {
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        found["torch"] = torch.get_num_threads()
        found["torch_interop"] = torch.get_num_interop_threads()
    try:
        own = engine.compute_threads() if engine is not None and hasattr(engine, "compute_threads") else None
    except Exception as exc:  # a count is best effort; never lose a measurement over it
        own = None, f"compute_threads() failed: {_one_line(exc)}"
    if own is not None:
        found["compute"], found["compute_from"] = own
    elif "torch" in found:
        found["compute"], found["compute_from"] = found["torch"], "torch.get_num_threads()"
    elif (found["omp_num_threads"] or "").isdigit():
        found["compute"], found["compute_from"] = int(found["omp_num_threads"]), "OMP_NUM_THREADS"
    else:
        found["compute"], found["compute_from"] = None, "not reported"
    return found


def _environment(engine: Any, engine_prefixes: list[str]) -> dict[str, Any]:
    prefixes = (*RECORDED_ENV_PREFIXES, *engine_prefixes)
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "multi_gpu_safety_env": {name: os.environ.get(name) for name in SAFETY_ENV},
        # engine switches set from outside (the spec names the engine's prefixes): they change what runs
        "engine_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)},
        **driver_info(),
    }
    try:
        env.update(engine.versions() if engine is not None else {})
    except Exception as exc:  # versions are best effort; never lose a measurement over them
        env["versions_error"] = _one_line(exc)
    return env


def main(engine_class: type) -> None:
    sys.exit(run(engine_class))
