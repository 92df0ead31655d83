"""MLC LLM: the checkpoint converted, configured and compiled by mlc_llm into a model library, run by TVM's Relax VM.

The cell builds what it runs in the model store, once (entrypoints/mlc_build.py):
mlc_llm's convert_weight (weights in the cell's quantisation), gen_config (the
chat config: context window, prefill chunk) and compile (the model library for the
cell's device), each kept and reused. Generation drives the compiled library's own
functions (embed, prefill, decode) through ``tvm.relax.VirtualMachine`` with MLC's
paged KV cache, greedily, exactly N tokens: what MLC's engine runs per step, without
its C++ serving engine (MLCEngine), which MLC ships only in its own wheels. Where
those wheels cannot be installed, mlc-llm's Python source at a pinned commit runs on
apache-tvm from PyPI (entrypoints/mlc_overlay). Each result names its route.
"""

from __future__ import annotations

from typing import Any

from runner.engines.base import Engine, Setting, recorded_weights_bytes

# mlc-llm at the pinned commit (79d603f0) knows these quantisations (mlc_llm/quantization/quantization.py).
QUANTIZATIONS = (
    "q4f16_1",
    "q0f16",
    "q0bf16",
    "q0f32",
    "q3f16_0",
    "q3f16_1",
    "q4f16_0",
    "q4bf16_0",
    "q4bf16_1",
    "q4f32_1",
    "q4f16_2",
    "q4f16_autoawq",
    "q4f16_ft",
)
# The seed table's MLC rows that the pinned release no longer has (its 8-bit group quantisation and AutoGPTQ
# loading are gone): accepted here, so that each row keeps its place, and reported by the cell as not run,
# with the quantisations the release does have.
RETIRED = ("q8f16_1", "autogptq_llama_q4f16_1")
# What apache-tvm's PyPI build can compile for CUDA: it has no cuBLAS, CUTLASS, thrust or FlashInfer, so
# mlc_llm's default O2 (which turns those on) is narrowed to the passes that need none of them.
DEFAULT_OPT = "flashinfer=0;cublas_gemm=0;faster_transformer=0;cutlass=0;cudagraph=1"

SETTINGS = {
    "quantization": Setting(
        "q4f16_1", "mlc_llm's weight quantisation (the seed's: q0f16, q8f16_1, q4f16_1)", QUANTIZATIONS + RETIRED
    ),
    "opt": Setting(
        DEFAULT_OPT, "mlc_llm compile --opt: O0-O3 or its flags (flashinfer, cublas_gemm, cudagraph, …)", type=str
    ),
    "context_window_size": Setting(
        None, "KV cache size in tokens; null = prompt + new tokens, rounded up to 256", type=(int, type(None))
    ),
    "prefill_chunk_size": Setting(
        None, "tokens a prefill step takes; null = the prompt's length, rounded up to 64", type=(int, type(None))
    ),
    "page_size": Setting(16, "tokens per page of MLC's paged KV cache (its engine's default: 16)", type=int),
}


def label(s: dict[str, Any]) -> list[str]:
    lines = [s["quantization"]]
    if s["opt"] != DEFAULT_OPT:
        lines.append(f"opt={s['opt']}")
    for name in ("context_window_size", "prefill_chunk_size"):
        if s[name] is not None:
            lines.append(f"{name}={s[name]}")
    if s["page_size"] != 16:
        lines.append(f"page_size={s['page_size']}")
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    for name in ("context_window_size", "prefill_chunk_size"):
        if s[name] is not None and s[name] < 1:
            return f"{name} must be at least 1 (or null for automatic), got {s[name]}"
    if s["page_size"] < 1:
        return f"page_size must be at least 1, got {s['page_size']}"
    if len(gpus) > 1:
        return "this tool runs MLC cells on one GPU (mlc_llm's tensor parallel needs its C++ engine's workers)"
    return None


def built_step(step: dict[str, Any]) -> str:
    """One build step for Notes: 'convert_weight on cuda 4.1 s', or a failed try with its reason."""
    name = f"{step['step']} on {step['device']}" if step.get("device") else step["step"]
    if step.get("failed"):
        return f"{name} failed after {step['seconds']} s ({step['failed']})"
    return f"{name} {step['seconds']} s"


def notes(result: dict[str, Any]) -> list[str]:
    """Which route ran, what building the library cost when it was built now, and why mlc_llm's own benchmark
    did not run beside it."""
    details = result.get("engine_details") or {}
    lines = []
    if details.get("route"):
        lines.append(details["route"])
    prepare = result.get("prepare") or {}
    built = [built_step(step) for step in prepare.get("built") or []]
    if built:
        lines.append("built now: " + ", ".join(built))
    elif prepare.get("cache_hit"):
        lines.append("library and weights from the store")
    if bench := (result.get("reference") or {}).get("mlc_llm_bench"):
        lines.append(f"mlc_llm bench not run: {bench}")
    return lines


def weights_bytes(result: dict[str, Any]) -> int | None:
    """The converted weights' size (the params shards the cell loaded), for the roofline column."""
    found = (result.get("engine_details") or {}).get("params_bytes")
    return int(found) if isinstance(found, int | float) and found > 0 else recorded_weights_bytes(result)


MLC = Engine(
    name="mlc",
    software="MLC LLM",
    entrypoint="run_mlc.py",
    helpers=("mlc_build.py",),
    settings=SETTINGS,
    label=label,
    check=check,
    recorded_env_prefixes=("MLC_", "TVM_"),
    notes=notes,
    weights_bytes=weights_bytes,
)
