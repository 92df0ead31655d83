"""vLLM cell: ``vllm.LLM`` with the cell's settings, prompts given as token ids, exactly N new tokens.

Sampling is greedy with ``ignore_eos`` and ``min_tokens = max_tokens = N``. The
prompt prefix cache is off unless the cell turns it on (``engine_args``), so
every repetition prefills its prompt as the first did. Time to first token
comes from vLLM's own request metrics (log stats are on for that); generate()
returns once every token is on the host, so its wall time needs no extra
synchronise. An AWQ cell on an unquantised checkpoint first has it
quantised (vllm_awq, cached in the model store). Memory: vLLM reserves
``gpu_memory_utilization`` of each card up front, so the harness's NVML peak on
every GPU of the cell is what it holds; details() adds the KV cache vLLM sized.
On CPU, vLLM would reserve that share of the host's RAM (and refuse to start when
other processes hold more than the rest), so a CPU cell gets a KV cache sized to
its workload instead (``kv_cache_memory_bytes``, unless engine_args sets it).

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from pathlib import Path
from typing import Any

import harness
import vllm_awq

try:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
except ImportError as exc:  # the cell fails with this reason; the rest of the matrix goes on
    vllm = None
    IMPORT_PROBLEM = f"{type(exc).__name__}: {exc}"

AWQ_METHODS = ("awq", "awq_marlin")
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def unknown_engine_args(names: list[str], known: set[str], version: str) -> str | None:
    """Why some engine_args name no argument of this vLLM (with a did-you-mean), or None."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"engine_args.{name} is not an argument of vLLM {version}'s EngineArgs{hint}"
    return None


def with_multi_gpu_safety(engine_args: dict[str, Any], gpus: int) -> dict[str, Any]:
    """On several GPUs, FlashInfer's all-reduce fusion stays off (it can use NVLink multicast)."""
    if gpus <= 1:
        return dict(engine_args)
    compilation = dict(engine_args.get("compilation_config") or {})
    compilation["pass_config"] = {**(compilation.get("pass_config") or {}), "fuse_allreduce_rms": False}
    return {**engine_args, "compilation_config": compilation}


def cpu_kv_cache_bytes(config: dict[str, Any], context: int, batch_size: int) -> int:
    """KV cache for batch_size sequences of context tokens, at fp32 and twice over, at least 256 MiB."""
    text = config.get("text_config") or config
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    per_token = 2 * text["num_hidden_layers"] * text.get("num_key_value_heads", heads) * head_dim * 4
    needed = 2 * per_token * context * batch_size
    mib = 1 << 20
    return max(256 * mib, -(-needed // mib) * mib)


def vllm_platform() -> str:
    """The device vLLM chose for this process (its current_platform: "cuda", "cpu", ...)."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gpus = spec["cell"]["gpus"]
        self.llm: Any = None
        self.requests = 0
        self.model_path = spec["model"]["path"]
        self.quantization = self.settings["quantization"]

    def check(self) -> None:
        if vllm is None:
            raise harness.CellUnsupported(f"vLLM is not importable here ({IMPORT_PROBLEM}): use the vllm image")
        if self.gpus:
            harness.refuse_cpu_stand_in(self.gpus, vllm_platform() != "cpu", "this vLLM runs on the cpu")
        known = {f.name for f in dataclasses.fields(EngineArgs)}
        problem = unknown_engine_args(list(self.settings["engine_args"]), known, vllm.__version__)
        if problem:
            raise harness.CellInvalid(problem)

    def prepare(self) -> dict[str, Any] | None:
        """An AWQ cell on an unquantised checkpoint: quantise it once (vllm_awq), before memory is sampled."""
        if self.quantization not in AWQ_METHODS:
            return None
        found = vllm_awq.checkpoint_quantisation(Path(self.model_path))
        if found == "awq":
            return None
        if found is not None:
            raise harness.CellInvalid(
                f"quantization={self.quantization!r} but the checkpoint is already quantised ({found}); "
                f"set quantization to null (vLLM reads the checkpoint's own) or point model.path at an AWQ export"
            )
        derived = self.spec["model"].get("derived_dir")
        if not derived:
            raise harness.CellInvalid("the cell spec has no model.derived_dir to keep the AWQ checkpoint in")
        try:
            path, record = vllm_awq.awq_checkpoint(self.spec["model"], Path(derived))
        except vllm_awq.QuantiserMissing as exc:
            raise harness.CellUnsupported(str(exc)) from None
        self.model_path = str(path)
        self.quantization = None  # a compressed-tensors checkpoint: vLLM takes the method from its config
        return record

    def load(self) -> None:
        self.llm = LLM(**self.engine_arguments(self.workload["batch_size"]))
        self.tokenizer = self.llm.get_tokenizer()

    def engine_arguments(self, sequences: int) -> dict[str, Any]:
        """vllm.LLM's (EngineArgs') arguments for this cell; on CPU a KV cache for `sequences` at once."""
        s = self.settings
        arguments: dict[str, Any] = {
            "enable_prefix_caching": False,  # each repetition prefills, as the first one did
            **with_multi_gpu_safety(s["engine_args"], s["tensor_parallel_size"] * s["pipeline_parallel_size"]),
            "model": self.model_path,
            "tensor_parallel_size": s["tensor_parallel_size"],
            "pipeline_parallel_size": s["pipeline_parallel_size"],
            "dtype": DTYPES[s["dtype"]],
            "quantization": self.quantization,
            "gpu_memory_utilization": s["gpu_memory_utilization"],
            "enforce_eager": s["enforce_eager"],
            "max_model_len": harness.context_length(s["max_model_len"], self.workload),
            "seed": 0,
            "disable_log_stats": False,  # request metrics carry the time to first token
        }
        if not self.gpus and "kv_cache_memory_bytes" not in arguments:
            config = json.loads((Path(self.model_path) / "config.json").read_text())
            arguments["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, arguments["max_model_len"], sequences)
        return arguments

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def synchronize(self) -> None:
        pass  # generate() returns host-side token ids: the device work behind them is done

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0, seed=0)
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        start = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        total = time.perf_counter() - start
        counts = [len(o.outputs[0].token_ids) for o in outputs]
        latencies = [getattr(o.metrics, "first_token_latency", 0.0) or 0.0 for o in outputs]
        first = max(latencies) if all(latencies) else None
        return harness.Timing(total, first, min(counts))

    def allocator_peak(self) -> dict[str, Any] | None:
        return None  # vLLM's workers hold the memory (other processes): the NVML device peak is the figure

    def compute_threads(self) -> tuple[None, str]:
        # the model runs in vLLM's worker process, which binds its own OpenMP threads to CPUs and logs them
        # (runner/engines/vllm.py reads the log: engine_log omp_cpus); this process's torch count is not it
        return None, "vLLM's worker (its log: OpenMP thread binding)"

    def details(self) -> dict[str, Any]:
        config = self.llm.llm_engine.vllm_config
        cache = config.cache_config
        blocks = getattr(cache, "num_gpu_blocks", None)
        return {
            "max_model_len": config.model_config.max_model_len,
            "dtype": str(config.model_config.dtype),
            "quantization": config.model_config.quantization,
            "kv_cache_blocks": blocks,
            "kv_cache_block_size": cache.block_size,
            "kv_cache_tokens": blocks * cache.block_size if blocks else None,
            "enforce_eager": config.model_config.enforce_eager,
            "prefix_caching": cache.enable_prefix_caching,
            "kv_cache_memory_bytes": getattr(cache, "kv_cache_memory_bytes", None),
        }

    def close(self) -> None:
        self.llm = None

    def versions(self) -> dict[str, Any]:
        import torch

        found = {"engine": "vllm", "engine_version": vllm.__version__, "vllm": vllm.__version__}
        found["torch"] = torch.__version__
        found["torch_cuda"] = torch.version.cuda
        return found


if __name__ == "__main__":
    harness.main(Engine)
