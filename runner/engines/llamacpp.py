"""llama.cpp through llama-cpp-python: GGUF quantisation type, GPU offload, context, flash attention, multi-GPU split.

The cell's GGUF is made from the matrix's checkpoint by llama.cpp's own
converter and quantiser (entrypoints/llamacpp_gguf.py) and cached in the model
store, so the same checkpoint feeds every engine of the table.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from runner.engines.base import Engine, OwnFigure, Server, Setting

# llama.cpp's quantisation types this tool offers (llama-quantize names them in capitals).
QUANT_TYPES = ("f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
QUANT_LABELS = {"f16": "fp16"}  # the seed table's own words

SETTINGS = {
    "quant": Setting("f16", "GGUF weight type: f16 from the converter, the rest from llama-quantize", QUANT_TYPES),
    "n_gpu_layers": Setting(-1, "layers offloaded to the GPU(s); -1 = all (ignored on CPU cells)", type=int),
    "n_ctx": Setting(None, "context size; null = prompt + new tokens, rounded up to 256", type=(int, type(None))),
    "n_batch": Setting(512, "logical batch for prompt processing (llama-cpp-python's default)", type=int),
    "n_ubatch": Setting(512, "physical batch for prompt processing", type=int),
    "flash_attn": Setting(False, "llama.cpp's flash attention kernels", type=bool),
    "split_mode": Setting("layer", "how several GPUs share the model", ("layer", "row", "none")),
    "main_gpu": Setting(0, "GPU (index within the cell) for split_mode none and row mode's small tensors", type=int),
    "tensor_split": Setting(
        None, "share of the model per GPU of the cell, e.g. [3, 1]; null = by free memory", type=(list, type(None))
    ),
    "n_threads": Setting(None, "CPU threads; null = llama-cpp-python's default (cores / 2)", type=(int, type(None))),
    "offload_kqv": Setting(True, "keep the KV cache on the GPU", type=bool),
}


def label(s: dict[str, Any]) -> list[str]:
    lines = [QUANT_LABELS.get(s["quant"], s["quant"])]
    if s["flash_attn"]:
        lines.append("flash_attn=True")
    if s["n_gpu_layers"] != -1:
        lines.append(f"n_gpu_layers={s['n_gpu_layers']}")
    if s["n_ctx"] is not None:
        lines.append(f"n_ctx={s['n_ctx']}")
    if (s["n_batch"], s["n_ubatch"]) != (512, 512):
        lines.append(f"n_batch={s['n_batch']} n_ubatch={s['n_ubatch']}")
    if s["split_mode"] != "layer":
        lines.append(f"split_mode={s['split_mode']}")
    if s["tensor_split"]:
        lines.append("tensor_split=" + "/".join(f"{v:g}" for v in s["tensor_split"]))
    if s["main_gpu"]:
        lines.append(f"main_gpu={s['main_gpu']}")
    if s["n_threads"] is not None:
        lines.append(f"n_threads={s['n_threads']}")
    if not s["offload_kqv"]:
        lines.append("offload_kqv=False")
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    for name in ("n_batch", "n_ubatch"):
        if s[name] < 1:
            return f"{name} must be at least 1, got {s[name]}"
    if s["n_ubatch"] > s["n_batch"]:
        return f"n_ubatch ({s['n_ubatch']}) cannot exceed n_batch ({s['n_batch']})"
    if s["n_gpu_layers"] < -1:
        return f"n_gpu_layers must be -1 (all) or a layer count, got {s['n_gpu_layers']}"
    if s["n_ctx"] is not None and s["n_ctx"] < 1:
        return f"n_ctx must be at least 1 (or null for automatic), got {s['n_ctx']}"
    split = s["tensor_split"]
    if split is not None:
        if not split or not all(isinstance(v, Real) and not isinstance(v, bool) and v >= 0 for v in split):
            return f"tensor_split must be a list of non-negative numbers, one per GPU, got {split!r}"
        if len(split) != len(gpus):
            return f"tensor_split has {len(split)} shares but the cell has {len(gpus)} GPU(s) {list(gpus)}"
        if not any(split):
            return "tensor_split gives every GPU a share of 0"
    if not 0 <= s["main_gpu"] < max(len(gpus), 1):
        return f"main_gpu {s['main_gpu']} is not an index into the cell's {len(gpus)} GPU(s) (0-based within the cell)"
    return None


def notes(result: dict[str, Any]) -> list[str]:
    """Whether llama.cpp's tokenizer (read from the GGUF) split the prompt text as transformers' does."""
    check = (result.get("engine_details") or {}).get("tokenizer_check") or {}
    if check.get("compared") and not check.get("agrees"):
        return [f"tokenizer differs from transformers' at token {check.get('first_difference')}"]
    return []


SERVER = Server(
    entrypoint="serve_llamacpp.py",
    settings={
        "parallel": Setting(
            None, "llama-server slots (--parallel); null = the sweep's highest level", type=(int, type(None))
        ),
        "cont_batching": Setting(True, "continuous batching (llama-server's default)", type=bool),
        "cache_ram_mib": Setting(
            None,
            "llama-server's prompt cache in host memory, MiB (--cache-ram); null = its default (8192), 0 = off. While"
            " on, each new request first saves the idle slots into it (--cache-idle-slots, its default)",
            type=(int, type(None)),
        ),
    },
    request_extras={"ignore_eos": True},
    # llama-server closed kept-alive connections after streamed responses: a pooled client's next request on
    # one failed ("Server disconnected", on the CPU at concurrency 1), so each request opens its own
    connections="never",
    forced_length="max_tokens with ignore_eos (llama-server's sampling parameter): the end token cannot stop a request",
    # its counters (llama-server --metrics) over each level's measured window
    own_figures={
        "generated_tokens": OwnFigure("llamacpp:tokens_predicted", "total", "tokens generated"),
        "prompt_tokens": OwnFigure("llamacpp:prompt_tokens", "total", "prompt tokens computed", noted=False),
        "prompt_tokens_cached": OwnFigure("llamacpp:prompt_tokens_cached", "total", "prompt tokens from its cache"),
        "decode_calls": OwnFigure("llamacpp:n_decode", "total", "llama_decode calls"),
    },
)

LLAMACPP = Engine(
    name="llamacpp",
    software="llama.cpp",
    entrypoint="run_llamacpp.py",
    helpers=("llamacpp_gguf.py", "llamacpp_bench.py"),
    settings=SETTINGS,
    label=label,
    check=check,
    recorded_env_prefixes=("GGML_", "LLAMA_"),
    notes=notes,
    server=SERVER,
)
