"""MLC LLM cell: a model library compiled by mlc_llm, driven step by step through TVM's Relax VM.

prepare() builds (or finds in the store) the cell's weights, config and library
(mlc_build). load() opens the library in a ``relax.VirtualMachine`` on the cell's
device, loads the weights in the order the library's metadata lists them, and makes
MLC's paged KV cache with the library's own ``create_tir_paged_kv_cache`` (one
sequence; the sliding window switched on where the model has one). Generation is
what MLC's engine runs for one request: ``embed`` then ``prefill`` over the prompt
(in chunks of the config's prefill size), then one ``decode`` per token, each
between the KV cache's begin_forward / end_forward, picking the argmax of the
returned logits on the host (greedy), exactly N tokens whatever they are. The cache
is cleared before each repetition. The clock reads after the device synchronises;
the first token closes prefill.

Two routes reach mlc_llm (``route`` in the result, and in Notes): MLC's own wheels
(mlc-llm with its TVM, in the mlc image), or mlc-llm's Python source at a pinned
commit (MLC_LLM_SOURCE) on apache-tvm from PyPI, through entrypoints/mlc_overlay.
Neither runs MLCEngine, MLC's C++ serving engine: the rows measure the compiled
model's kernels and MLC's KV cache under this loop, and say so.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import harness
import mlc_build
from shared import installed_version

OVERLAY = Path(__file__).resolve().parent / "mlc_overlay"
CUDA_RUNTIME = "libcudart.so.13"  # what apache-tvm 0.27's libtvm_runtime_cuda.so links


def cuda_runtime_files(folders: list[str], cuda: str) -> list[str]:
    """Where a libcudart.so.13 lies off the loader's path: pip's nvidia-cuda-runtime in the given
    site folders (nvidia/cu13/lib/, which torch's CUDA 13 wheels install), then a CUDA toolkit."""
    import glob

    places = [os.path.join(folder, "nvidia", "*", "lib") for folder in folders]
    places += [os.path.join(cuda, "lib64"), os.path.join(cuda, "targets", "*", "lib")]
    return [found for place in places for found in sorted(glob.glob(os.path.join(place, CUDA_RUNTIME)))]


def preload_cuda_runtime() -> str | None:
    """Load CUDA's runtime library before TVM does, where the loader cannot find it by name.

    apache-tvm's CUDA runtime links libcudart.so.13; TVM drops a failed load of it and reports no
    GPU. Loaded first by its full path, it satisfies TVM's link by its name (as torch does for its
    own CUDA libraries). Returns the file loaded this way, or None when the loader finds it by name
    or it is nowhere.
    """
    import ctypes

    try:
        ctypes.CDLL(CUDA_RUNTIME, mode=ctypes.RTLD_GLOBAL)
        return None
    except OSError:
        pass
    cuda = os.environ.get("CUDA_PATH") or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    for found in cuda_runtime_files(sys.path, cuda):
        try:
            ctypes.CDLL(found, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return found
    return None


PRELOADED_CUDA_RUNTIME = preload_cuda_runtime()

try:
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.contrib import tvmjs
except ImportError as exc:  # the cell is reported as not run here; the rest of the matrix goes on
    tvm = None
    IMPORT_PROBLEM = f"{type(exc).__name__}: {exc}"


def shape(values: list[int]) -> Any:
    """A TVM shape tuple, in 0.27's spelling (tvm_ffi.Shape) or the older one (tvm.runtime.ShapeTuple)."""
    try:
        from tvm_ffi import Shape
    except ImportError:
        return tvm.runtime.ShapeTuple(values)
    return Shape(values)


def device_array(values: Any, device: Any) -> Any:
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    return make(values, device=device)


def source_id(package: Path) -> str:
    """A content hash of an mlc_llm source tree (an archive has no commit to name)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def named_source() -> str | None:
    """Where mlc-llm's source is: MLC_LLM_SOURCE, else <this Python's prefix>/mlc-llm (`make setup-mlc`)."""
    default = Path(sys.prefix) / "mlc-llm"
    return os.environ.get("MLC_LLM_SOURCE") or (str(default) if (default / "python").is_dir() else None)


def find_route() -> dict[str, Any]:
    """How this environment reaches mlc_llm: MLC's installed package, or mlc-llm's source over the overlay."""
    found = importlib.util.find_spec("mlc_llm")
    locations = list(found.submodule_search_locations or []) if found else []
    if locations and (Path(locations[0]) / "cli" / "compile.py").is_file():
        version = mlc_distribution_version() or "unknown"
        return {
            "route": f"mlc_llm {version} (MLC's package)",
            "version": version,
            "package": Path(locations[0]),
            "env": dict(os.environ),
        }
    named = named_source()
    if not named:
        raise harness.CellUnsupported(
            "mlc_llm is not installed here: use the mlc image (MLC's wheels), `make setup-mlc` (mlc-llm's source "
            "at 79d603f0 on apache-tvm 0.27), or set MLC_LLM_SOURCE to such a checkout (README: MLC LLM)"
        )
    root = Path(named)
    package = root if (root / "libinfo.py").is_file() else root / "python" / "mlc_llm"
    if not (package / "libinfo.py").is_file():
        raise harness.CellUnsupported(f"MLC_LLM_SOURCE={named} holds no mlc_llm package ({package}/libinfo.py)")
    version = f"source-{source_id(package)}"
    return {
        "route": f"mlc-llm source ({version}) on apache-tvm {tvm.__version__} through entrypoints/mlc_overlay",
        "version": version,
        "package": package,
        "env": mlc_build.overlay_environment(OVERLAY, named),
    }


def cuda_runtime_problem() -> str:
    """Why TVM has no CUDA device: TVM drops a failed load of its CUDA runtime library silently (a missing
    libcuda.so.1 or libcudart.so.13 then reads as "no GPU"), so say what the load says."""
    import ctypes

    library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not library.is_file():
        return f"this TVM has no {library.name}"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{library.name} does not load: {exc}"
    return "a GPU cell on a machine without one"


def mlc_distribution_version() -> str | None:
    """The installed mlc-llm distribution's version, whatever its CUDA suffix (mlc-llm-cu128, -nightly-…)."""
    for distribution in importlib.metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower().replace("_", "-")
        if name == "mlc-llm" or name.startswith("mlc-llm-"):
            return distribution.version
    return None


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gpu = bool(spec["cell"]["gpus"])
        if not self.gpu:
            os.environ.setdefault("TVM_NUM_THREADS", str(len(harness.cell_cpus())))  # before TVM's pool starts
        self.context = harness.context_length(self.settings["context_window_size"], self.workload)
        self.chunk = self.settings["prefill_chunk_size"] or harness.round_up(self.workload["prompt_tokens"], 64)
        self.route: dict[str, Any] = {}
        self.built: dict[str, Path] = {}
        self.device: Any = None
        self.vm: Any = None
        self.params: list[Any] = []
        self.kv: Any = None
        self.functions: dict[str, Any] = {}  # the VM's and TVM's functions a forward step calls (load)
        self.config: dict[str, Any] = {}
        self.tokenizer: Any = None
        self.facts: dict[str, Any] = {}

    def _target(self) -> str:
        if not self.gpu:
            return "llvm"
        if "MLC's package" in self.route["route"]:
            return "cuda"  # MLC's TVM detects the GPU's architecture
        major, minor = tvm.cuda(0).compute_version.split(".")
        return json.dumps({"kind": "cuda", "arch": f"sm_{major}{minor}"})  # TVM 0.27 takes targets as JSON

    def check(self) -> None:
        if tvm is None:
            raise harness.CellUnsupported(f"TVM is not importable here ({IMPORT_PROBLEM}): use the mlc image")
        quantization = self.settings["quantization"]
        if self.workload["batch_size"] != 1:
            raise harness.CellInvalid("MLC cells here run one sequence (the VM loop has no batch): batch_size 1")
        if self.gpu and not tvm.cuda(0).exist:
            raise harness.CellUnsupported(f"TVM sees no CUDA device here ({cuda_runtime_problem()})")
        self.route = find_route()
        known = self._quantizations()
        if known and quantization not in known:
            raise harness.CellUnsupported(
                f"{quantization} is not a quantisation of this mlc_llm ({self.route['version']}): it has "
                f"{', '.join(known)}"
            )
        if self.chunk < 1 or self.context < self.workload["prompt_tokens"] + self.workload["new_tokens"]:
            raise harness.CellInvalid(
                f"context_window_size {self.context} is smaller than prompt + new tokens; raise it or leave it null"
            )

    def _quantizations(self) -> list[str]:
        """The quantisation names this mlc_llm knows, read from its source (without importing it)."""
        table = self.route["package"] / "quantization" / "quantization.py"
        if not table.is_file():
            return []
        text = table.read_text()
        body = text[text.index("QUANTIZATION") :] if "QUANTIZATION" in text else text
        return re.findall(r'^\s{4}"([a-z0-9_]+)":', body, flags=re.MULTILINE)

    def prepare(self) -> dict[str, Any]:
        derived = self.spec["model"].get("derived_dir")
        if not derived:
            raise harness.CellInvalid("the cell spec has no model.derived_dir to keep MLC builds in")
        build = mlc_build.MlcBuild(
            self.spec["model"], Path(derived), (self.route["version"], tvm.__version__), self.route["env"]
        )
        s = self.settings
        # weights are converted on the cell's GPU where that works (seconds), else on the CPU (minutes)
        devices = ("cuda", "cpu") if self.gpu else ("cpu",)
        self.built = build.get(s["quantization"], self.context, self.chunk, self._target(), s["opt"], devices)
        return {
            "route": self.route["route"],
            "library": str(self.built["library"]),
            "params": str(self.built["params"]),
            "cache_hit": not build.built,
            "built": build.built,
            "seconds": round(sum(step["seconds"] for step in build.built), 1),
        }

    def load(self) -> None:
        self.device = tvm.cuda(0) if self.gpu else tvm.cpu(0)
        executable = tvm.runtime.load_module(str(self.built["library"]))
        self.vm = relax.VirtualMachine(executable, self.device)
        metadata = json.loads(self.vm["_metadata"]())
        cache, _ = tvmjs.load_tensor_cache(str(self.built["params"]), self.device)
        self.params = [cache[p["name"]] for p in metadata["params"]]
        # looked up once: a forward step calls them for every token
        self.functions = {name: self.vm[name] for name in ("embed", "prefill", "decode")}
        self.functions.update(
            (name, tvm.get_global_func(f"vm.builtin.{name}"))
            for name in ("reshape", "kv_state_begin_forward", "kv_state_end_forward")
        )
        self.config = json.loads((self.built["config"] / mlc_build.CONFIG_MARKER).read_text())
        window = self.config.get("sliding_window_size", -1)
        total = self.config["context_window_size"] if self.config["context_window_size"] != -1 else window
        self.kv = self.vm["create_tir_paged_kv_cache"](
            shape([1]), shape([total]), shape([self.config["prefill_chunk_size"]]),
            shape([self.settings["page_size"]]), shape([int(window != -1)]),
        )  # fmt: skip
        self._start_sequence()
        self.facts = {
            "route": self.route["route"],
            "target": self._target(),
            "quantization": self.settings["quantization"],
            "library": str(self.built["library"]),
            "params_bytes": sum(p.stat().st_size for p in self.built["params"].glob("*.bin")),
            "kv_cache": {
                "max_total_tokens": total,
                "prefill_chunk": self.config["prefill_chunk_size"],
                "page_size": self.settings["page_size"],
                "sliding_window": window,
            },
            "sampling": "argmax of the returned logits on the host (greedy)",
        }
        if self.gpu:
            self.facts["cuda_runtime"] = PRELOADED_CUDA_RUNTIME or f"{CUDA_RUNTIME} found by the loader"

    def _start_sequence(self) -> None:
        """An empty KV cache holding sequence 0 (with the model's sliding window, where it has one)."""
        clear = tvm.get_global_func("vm.builtin.kv_state_clear", allow_missing=True)
        if clear is not None:
            clear(self.kv)
        else:
            tvm.get_global_func("vm.builtin.kv_state_remove_sequence")(self.kv, 0)
        tvm.get_global_func("vm.builtin.kv_state_add_sequence")(self.kv, 0)
        window = self.config.get("sliding_window_size", -1)
        if window != -1:
            enable = tvm.get_global_func("vm.builtin.attention_kv_cache_enable_sliding_window_for_seq")
            enable(self.kv, 0, window, self.config.get("attention_sink_size", 0))

    def _load_tokenizer(self) -> None:
        folder = Path(self.spec["model"]["path"])
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self.tokenizer = lambda text: tokenizer.encode(text).ids
            return
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(folder)
        self.tokenizer = lambda text: slow(text)["input_ids"]

    def _step(self, function: str, ids: list[int]) -> Any:
        """One forward step over ids for sequence 0: the logits of its last position, as numpy."""
        logits = self._forward(function, device_array(np.array(ids, dtype="int32"), self.device), len(ids))
        return logits.numpy()[0, -1]

    def _forward(self, function: str, ids: Any, count: int) -> Any:
        """prefill or decode over count token ids already on the device, for sequence 0: the logits, on the device."""
        f = self.functions
        embedded = f["embed"](ids, self.params)
        embedded = f["reshape"](embedded, shape([1, count, embedded.shape[-1]]))
        f["kv_state_begin_forward"](self.kv, shape([0]), shape([count]))
        logits, _ = f[function](embedded, self.kv, self.params)
        f["kv_state_end_forward"](self.kv)
        return logits

    def synchronize(self) -> None:
        if self.device is not None:
            self.device.sync()

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            self._load_tokenizer()
        return self.tokenizer(text)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        prompt = prompts[0]
        self._start_sequence()
        chunk = self.config["prefill_chunk_size"]
        self.synchronize()
        start = time.perf_counter()
        for begin in range(0, len(prompt), chunk):
            logits = self._step("prefill", prompt[begin : begin + chunk])
        token = int(np.argmax(logits))  # the logits came to the host: the device is done with prefill
        first = time.perf_counter() - start
        made = [token]
        while len(made) < new_tokens:
            token = int(np.argmax(self._step("decode", [token])))
            made.append(token)
        self.synchronize()
        total = time.perf_counter() - start
        self.facts["generated"] = made[:16]
        return harness.Timing(total, first, len(made))

    def allocator_peak(self) -> dict[str, Any] | None:
        return None  # TVM's own allocator: the NVML device peak is its memory

    def compute_threads(self) -> tuple[int, str] | None:
        if self.gpu:
            return None
        return int(os.environ["TVM_NUM_THREADS"]), "TVM_NUM_THREADS (TVM's CPU thread pool)"

    def details(self) -> dict[str, Any]:
        return self.facts

    def close(self) -> None:
        self.kv = self.vm = None
        self.params, self.functions = [], {}
        gc.collect()

    def versions(self) -> dict[str, Any]:
        found: dict[str, Any] = {"engine": "MLC LLM", "engine_version": self.route.get("version", "")}
        if tvm is not None:
            found["tvm"] = tvm.__version__
        for package in ("apache-tvm", "apache-tvm-ffi"):
            if version := installed_version(package):
                found[package] = version
        if mlc_distribution_version():
            found["mlc-llm"] = mlc_distribution_version()
        return found

    def reference(self, result: dict[str, Any]) -> dict[str, Any]:
        """mlc_llm bench drives MLCEngine, which this route lacks. What the route can measure beside the row: the
        same library's decode steps back to back, each fed the same token without the logits coming to the host,
        synchronised once at the end (what an engine sampling on the device could reach at most with this library).
        The row's decode over it is the share the host's per-token round trip leaves."""
        if "MLC's package" in self.route.get("route", ""):
            return {"tool": "mlc_llm bench", "error": "not wired yet for MLC's package route"}
        workload = result["workload"]
        steps = workload["new_tokens"] - 1
        self.load()
        try:
            enqueue_s, total_s = self._decode_back_to_back(workload["prompt_tokens"], steps)
        finally:
            self.close()
        rate = steps / total_s
        ours = (result["metrics"].get("decode_tokens_per_s") or {}).get("median")
        return {
            "tool": "same library without host sampling",
            "decode_tokens_per_s": rate,
            "decode_ratio": ours / rate if ours else None,
            "steps": steps,
            "host_enqueue_s": enqueue_s,
            "seconds": total_s,
            "mlc_llm_bench": "needs MLCEngine (libmlc_llm.so, MLC's C++ engine), absent on this route",
        }

    def _decode_back_to_back(self, prompt_tokens: int, steps: int) -> tuple[float, float]:
        """After a prefill of prompt_tokens, steps decode calls on one token kept on the device; the seconds the
        host took to issue them and the seconds until the device finished them."""
        token = int(self.tokenize("the")[-1])
        chunk = self.config["prefill_chunk_size"]
        self._start_sequence()
        prompt = [token] * prompt_tokens
        for begin in range(0, len(prompt), chunk):
            self._step("prefill", prompt[begin : begin + chunk])
        ids = device_array(np.array([token], dtype="int32"), self.device)
        self.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self._forward("decode", ids, 1)
        enqueued = time.perf_counter() - start
        self.synchronize()
        return enqueued, time.perf_counter() - start


if __name__ == "__main__":
    harness.main(Engine)
