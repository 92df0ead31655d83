"""vLLM's offline engine (``vllm.LLM``): parallelism, dtype, quantization, memory share, CUDA graphs.

Any other vLLM engine argument goes in ``engine_args``; the entrypoint checks its
names against the pinned vLLM's own EngineArgs, so a typo fails the cell with a
did-you-mean instead of being ignored. AWQ cells read an AWQ checkpoint
(``derived_checkpoint``: a synthetic model's is written by runner.models.derived,
a real one is quantised in the cell by entrypoints/vllm_awq.py); what vLLM reports
only in its workers' log (weights, KV cache, kernels) is read back from the cell
log (``log_facts``) and shown in Notes.
"""

from __future__ import annotations

import re
from typing import Any

from runner.cpuset import named
from runner.engines.base import Engine, OwnFigure, Server, ServerReference, Setting, harness_threads
from runner.serving.loadgen import level_requests

QUANTIZATIONS = (None, "fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "bitsandbytes")

SETTINGS = {
    "dtype": Setting(
        "auto", "weights and activations dtype (auto: the checkpoint's)", ("auto", "bf16", "fp16", "fp32")
    ),
    "tensor_parallel_size": Setting(1, "GPUs each layer is split over", type=int),
    "pipeline_parallel_size": Setting(1, "GPUs the layers are staged over", type=int),
    "quantization": Setting(None, "vLLM quantization method (null: none, or the checkpoint's own)", QUANTIZATIONS),
    "gpu_memory_utilization": Setting(
        0.9, "share of each GPU vLLM reserves up front (CPU cells: a KV cache sized to the workload)", type=(float, int)
    ),
    "enforce_eager": Setting(False, "no CUDA graphs", type=bool),
    "max_model_len": Setting(
        None, "context size; null = prompt + new tokens, rounded up to 256", type=(int, type(None))
    ),
    "engine_args": Setting({}, "any other vllm.LLM / EngineArgs argument, checked by name in the cell", type=dict),
}
SEED_DTYPE_WORDS = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def label(s: dict[str, Any]) -> list[str]:
    lines = [f"tensor_parallel_size={s['tensor_parallel_size']}"]
    if s["pipeline_parallel_size"] != 1:
        lines.append(f"pipeline_parallel_size={s['pipeline_parallel_size']}")
    if s["quantization"]:
        lines.append(f"quantization='{s['quantization']}'")
    if SEED_DTYPE_WORDS[s["dtype"]]:
        lines.append(f"dtype={SEED_DTYPE_WORDS[s['dtype']]}")
    if s["enforce_eager"]:
        lines.append("enforce_eager=True")
    if s["gpu_memory_utilization"] != 0.9:
        lines.append(f"gpu_memory_utilization={s['gpu_memory_utilization']:g}")
    if s["max_model_len"] is not None:
        lines.append(f"max_model_len={s['max_model_len']}")
    lines.extend(f"{k}={v!r}" for k, v in sorted(s["engine_args"].items()))
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    tp, pp = s["tensor_parallel_size"], s["pipeline_parallel_size"]
    if tp < 1 or pp < 1:
        return f"tensor_parallel_size and pipeline_parallel_size must be at least 1, got {tp} and {pp}"
    if not gpus and tp * pp != 1:
        return "a CPU cell (gpus: []) runs one vLLM worker: tensor_parallel_size and pipeline_parallel_size must be 1"
    if gpus and tp * pp != len(gpus):
        return (
            f"tensor_parallel_size x pipeline_parallel_size = {tp * pp} but the cell has {len(gpus)} GPU(s) "
            f"{list(gpus)}; vLLM uses exactly that many: give the cell that many GPUs"
        )
    if not 0 < s["gpu_memory_utilization"] <= 1:
        return f"gpu_memory_utilization must be in (0, 1], got {s['gpu_memory_utilization']}"
    if s["max_model_len"] is not None and s["max_model_len"] < 1:
        return f"max_model_len must be at least 1 (or null for automatic), got {s['max_model_len']}"
    overlap = sorted(set(s["engine_args"]) & (set(SETTINGS) | {"model", "seed"}))
    if overlap:
        return f"engine_args.{overlap[0]} is set by the cell itself; use the setting (or leave it to the tool)"
    return None


AWQ_METHODS = ("awq", "awq_marlin")


def derived_checkpoint(s: dict[str, Any]) -> str | None:
    """AWQ cells read an AWQ checkpoint (runner.models.derived makes a synthetic model's)."""
    return "awq" if s["quantization"] in AWQ_METHODS else None


# What vLLM's workers log and nothing else reports (one line per worker on several GPUs).
LOG_PATTERNS = {
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "kv_cache_tokens": r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens",
    "cuda_graphs_gib": r"Graph capturing finished in \d+ secs, took ([\d.]+) GiB",
    "attention_backend": r"Using (?:AttentionBackendEnum\.)?(\w+) (?:attention )?backend\b",
    "linear_kernel": r"(?:Using|Selected) (\w+) for (?:\w+LinearMethod|CompressedTensorsW\w+)",
    "awq_fallback": r"(Falling back to unoptimized AWQ kernels)",
    # a CPU worker's OpenMP threads, one per CPU it binds them to ("local_rank=0, core ids=[0, 1]"), and the
    # CPUs it leaves to the engine's other processes ("reserved_cpus=[1]")
    "omp_cpus": r"local_rank=\d+, core ids=\[([\d, ]*)\]",
    "omp_reserved_cpus": r"reserved_cpus=\[([\d, ]*)\]",
    # the first exception an engine or worker process logged; the cell itself only sees
    # "EngineDeadError" or "Engine core initialization failed. See root cause above"
    "process_error": r"(?m)^\((?:\w*Worker|EngineCore)[^)]*\) ERROR [^\]]*\] ((?:\w+\.)*\w*(?:Error|Exception): .+)$",
}


def log_facts(text: str) -> dict[str, list[Any]]:
    """Every value of LOG_PATTERNS in the cell's log: sizes as floats / ints, names as text."""
    facts: dict[str, list[Any]] = {}
    for name, pattern in LOG_PATTERNS.items():
        found = re.findall(pattern, text)
        if name.endswith("_gib"):
            found = [float(v) for v in found]
        elif name.endswith("_tokens"):
            found = [int(v.replace(",", "")) for v in found]
        elif name.startswith("omp_"):
            found = [[int(c) for c in v.split(",") if c.strip()] for v in dict.fromkeys(found)]
        else:
            found = list(dict.fromkeys(found))  # names once each, in order
        if found:
            facts[name] = found
    return facts


def notes(result: dict[str, Any]) -> list[str]:
    """Weights and KV cache as vLLM sized them (per GPU), and the quantised kernel it chose."""
    facts = result.get("engine_log") or {}
    out = []
    if facts.get("weights_gib"):
        out.append("weights " + "+".join(f"{v:g}" for v in facts["weights_gib"]) + " GiB")
    explicit = (result.get("engine_details") or {}).get("kv_cache_memory_bytes")
    if facts.get("kv_cache_gib"):
        out.append("KV cache " + "+".join(f"{v:g}" for v in facts["kv_cache_gib"]) + " GiB")
    elif explicit:
        out.append(f"KV cache {explicit / 2**30:.3g} GiB (set, not a share of memory)")
    if result["cell"]["settings"].get("quantization") and facts.get("linear_kernel"):
        out.append("kernel " + "/".join(facts["linear_kernel"]))
    quantised = ((result.get("prepare") or {}).get("quantised_by")) or {}
    if quantised:
        recipe = quantised.get("recipe", {})
        out.append(
            f"AWQ by llm-compressor {quantised.get('llmcompressor')} ({recipe.get('scheme')}, "
            f"group {recipe.get('group_size')}, {quantised.get('calibration', {}).get('samples')} calibration samples)"
        )
    if facts.get("awq_fallback"):
        out.append("some layers on vLLM's unoptimised AWQ kernel")
    if facts.get("omp_cpus"):
        bound, spare = facts["omp_cpus"][0], (facts.get("omp_reserved_cpus") or [[]])[0]
        threads = f"{len(bound)} OpenMP thread{'' if len(bound) == 1 else 's'} bound to {named(bound)}"
        out.append(threads + (f" ({named(spare)} left to vLLM's other processes)" if spare else ""))
    return out


def compute_threads(result: dict[str, Any]) -> int | None:
    """A CPU cell's threads: the OpenMP threads vLLM's worker bound, one per CPU its log names."""
    bound = (result.get("engine_log") or {}).get("omp_cpus")
    return len(bound[0]) if bound else harness_threads(result)


# An error that only says the real one is elsewhere (an engine reporting its worker's failure).
POINTS_ELSEWHERE = r"see (?:the )?(?:stack trace|root cause)|initialization failed due to an exception"


def failure_cause(facts: dict[str, list[Any]]) -> str | None:
    """The first exception a vLLM engine or worker process raised (the cell's own error only says it died)."""
    own = [e for e in facts.get("process_error", []) if not re.search(POINTS_ELSEWHERE, e, re.IGNORECASE)]
    found = own or facts.get("process_error")
    return found[0][:300] if found else None


def bench_serve_arguments(
    url: str, served: str, tokenizer: str, level: int, sweep: dict[str, Any], result: str, seed: int
) -> list[str]:
    """vllm bench serve for one level, as the load generator ran it (entrypoints/vllm_bench_serve.py); with
    --save-detailed its result keeps every request's timings, which the entrypoint writes beside its figures."""
    return [
        "--result", result,
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", tokenizer, "--served-model-name", served, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(sweep["prompt_tokens"]),
        "--random-output-len", str(sweep["new_tokens"]),
        "--random-range-ratio", f"{sweep.get('length_range_ratio', 0):g}",  # 0: every request the same lengths
        "--num-prompts", str(level_requests(sweep, level)), "--max-concurrency", str(level),
        "--num-warmups", str(sweep["warmup_requests"]), "--ignore-eos", "--disable-tqdm", "--save-detailed",
        "--seed", str(seed),  # as AIPerf's (level_seed): other prompts at each level and run
    ]  # fmt: skip


def weights_bytes(result: dict[str, Any]) -> int | None:
    """What vLLM's log says its model weights took on each GPU, times the GPUs (tensor / pipeline parallel)."""
    gib = (result.get("engine_log") or {}).get("weights_gib")
    if not gib:
        return None
    per_gpu = max(gib) if isinstance(gib, list) else gib
    return int(float(per_gpu) * 2**30 * max(1, len(result["cell"].get("gpus") or [])))


SERVER = Server(
    entrypoint="serve_vllm.py",
    settings={},  # max_num_seqs and the rest through engine_args, as offline
    request_extras={"ignore_eos": True},
    forced_length="max_tokens with ignore_eos (vLLM's sampling parameter): the end token cannot stop a request",
    reference=ServerReference("vllm_bench_serve.py", "vllm bench serve", bench_serve_arguments),
    # its own metrics (vllm serve's /metrics) over each level's measured window: its TTFT from a request's arrival
    # in the server, beside the clients' (which add HTTP and streaming)
    own_figures={
        "ttft_ms_avg": OwnFigure("vllm:time_to_first_token_seconds", "avg", "TTFT mean", 1000, " ms"),
        "itl_ms_avg": OwnFigure("vllm:inter_token_latency_seconds", "avg", "ITL mean", 1000, " ms"),
        "queue_ms_avg": OwnFigure("vllm:request_queue_time_seconds", "avg", "queued mean", 1000, " ms"),
        "generated_tokens": OwnFigure("vllm:generation_tokens", "total", "tokens generated"),
        "prompt_tokens": OwnFigure("vllm:prompt_tokens", "total", "prompt tokens", noted=False),
        "prefix_cache_hit_tokens": OwnFigure("vllm:prefix_cache_hits", "total", "prompt tokens from its prefix cache"),
        "preemptions": OwnFigure("vllm:num_preemptions", "total", "preemptions"),
    },
)

VLLM = Engine(
    name="vllm",
    software="vLLM",
    entrypoint="run_vllm.py",
    settings=SETTINGS,
    label=label,
    check=check,
    helpers=("vllm_awq.py", "vllm_awq_quantise.py"),
    derived_checkpoint=derived_checkpoint,
    # vLLM's symmetric-memory all-reduce uses NVLink multicast: off, like the shared safety variables
    cell_env={"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"},
    recorded_env_prefixes=("VLLM_",),
    log_facts=log_facts,
    notes=notes,
    failure_cause=failure_cause,
    compute_threads=compute_threads,
    server=SERVER,
    weights_bytes=weights_bytes,
)
