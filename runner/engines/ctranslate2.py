"""CTranslate2: the checkpoint converted by its own Transformers converter, one compute type per cell, CPU or GPU.

The cell's model is converted from the matrix's checkpoint by CTranslate2's
converter in the cell (entrypoints/ctranslate2_convert.py, where torch and
transformers are), once per checkpoint and weight type, and cached in the model
store. Inference needs only ctranslate2: ``ctranslate2.Generator`` streaming
greedy tokens (generate_tokens), exactly N of them. What the seed table called
"missing some of the usual generation parameters" is said at validation: a
setting other engines take and CTranslate2 has no equivalent for fails with why
(``lacks``), rather than running as if it were honoured.
"""

from __future__ import annotations

from typing import Any

from runner.engines.base import Engine, Setting

# Compute types of CTranslate2 4.8 (ctranslate2.Generator's compute_type), minus "default" and "auto",
# which would let the device choose and leave the row's label unsaid. Weights are stored in this type at
# conversion; a type the device cannot run fails the cell with CTranslate2's own reason.
COMPUTE_TYPES = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16")

SETTINGS = {
    "compute_type": Setting(
        "float16", "weights and computation type (also the converted model's weight type)", COMPUTE_TYPES
    ),
    "intra_threads": Setting(
        None, "OpenMP threads of the generator on CPU; null = the cell's CPUs", type=(int, type(None))
    ),
    "inter_threads": Setting(
        1, "generations CTranslate2 runs in parallel (one here: batch 1 is one request)", type=int
    ),
    "max_batch_size": Setting(0, "CTranslate2's max_batch_size for generate_tokens; 0 = the whole batch", type=int),
    "flash_attention": Setting(False, "CTranslate2's Flash Attention 2 for self-attention (GPU only)", type=bool),
}

_NO_CACHE_TYPE = "its KV cache is kept in the compute type; choose compute_type instead"
_NO_CONTEXT = "its KV cache grows with the sequence: there is no context size to set"
# Settings of other engines that CTranslate2 has no equivalent for: a cell naming one fails validation
# with this reason instead of running without it.
LACKS = {
    "cache": _NO_CACHE_TYPE,
    "kv_cache_dtype": _NO_CACHE_TYPE,
    "type_k": _NO_CACHE_TYPE,
    "n_ctx": _NO_CONTEXT,
    "max_seq_len": _NO_CONTEXT,
    "max_model_len": _NO_CONTEXT,
    "cuda_graphs": "it has no CUDA graph capture (each step launches its kernels)",
    "enforce_eager": "it has no CUDA graph capture to turn off",
    "compile": "it has no compiler step (torch.compile and the like)",
    "attention": "its attention is its own; the one choice is flash_attention (GPU)",
    "attn_implementation": "its attention is its own; the one choice is flash_attention (GPU)",
    "flash_attn": "its switch is called flash_attention",
    "speculative_model": "it has no speculative decoding",
    "n_gpu_layers": "a model is all on the CPU or all on GPU(s): give the cell gpus: [] or a GPU",
    "tensor_parallel_size": "its tensor parallel mode runs under MPI (mpirun), which this runner does not launch",
}


def label(s: dict[str, Any]) -> list[str]:
    lines = [s["compute_type"]]
    if s["flash_attention"]:
        lines.append("flash_attention=True")
    if s["intra_threads"] is not None:
        lines.append(f"intra_threads={s['intra_threads']}")
    if s["inter_threads"] != 1:
        lines.append(f"inter_threads={s['inter_threads']}")
    if s["max_batch_size"]:
        lines.append(f"max_batch_size={s['max_batch_size']}")
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    if len(gpus) > 1:
        return f"CTranslate2 runs a cell on one GPU here ({LACKS['tensor_parallel_size']}); give it one GPU"
    if s["intra_threads"] is not None and s["intra_threads"] < 1:
        return f"intra_threads must be at least 1 (or null for the cell's CPUs), got {s['intra_threads']}"
    if s["inter_threads"] < 1:
        return f"inter_threads must be at least 1, got {s['inter_threads']}"
    if s["max_batch_size"] < 0:
        return f"max_batch_size must be 0 (the whole batch) or more, got {s['max_batch_size']}"
    if s["flash_attention"] and not gpus:
        return "flash_attention is CTranslate2's CUDA kernel: a CPU cell cannot use it"
    return None


def notes(result: dict[str, Any]) -> list[str]:
    """The plain CTranslate2 script's figures beside the row, and the conversion's time when it ran now."""
    prepare = result.get("prepare") or {}
    lines = []
    reference = result.get("reference") or {}
    if reference.get("tokens_per_s"):
        lines.append(
            f"plain generate_tokens {reference['tokens_per_s']:.2f} tok/s (this row = {reference['ratio']:.2f}x), "
            f"generate_batch {reference['batch_tokens_per_s']:.2f}"
        )
    if prepare.get("cache_hit") is False and prepare.get("seconds") is not None:
        lines.append(f"converted in {prepare['seconds']} s")
    return lines


CTRANSLATE2 = Engine(
    name="ctranslate2",
    software="CTranslate2",
    entrypoint="run_ctranslate2.py",
    helpers=("ctranslate2_convert.py", "ctranslate2_bench.py"),
    settings=SETTINGS,
    label=label,
    check=check,
    lacks=LACKS,
    recorded_env_prefixes=("CT2_", "OMP_", "CUDA_CACHE_"),
    notes=notes,
)
