"""llama.cpp's own benchmark, llama-bench, on a cell's GGUF and settings, and its figures beside the cell's.

llama-bench times prompt processing (pp: the prompt's tokens in one batch) and
text generation (tg: one token at a time) apart, in C++, with no sampling, each
from a context already holding ``-d`` tokens. It runs at depths 0 and the
prompt length: pp from depth 0 is what a cell's prefill does, tg from the
prompt's depth is what its decode does (the cell's N-1 decode steps attend to
prompt + generated tokens, so llama-bench's tg from an empty context would
compare shorter attention). The cell's prefill rate is prompt tokens over time
to first token (prefill plus picking one token); its decode rate covers the
other N-1 tokens, each picked and fed back. The ratios say how much of
llama.cpp's own speed the cell's loop keeps.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ALL_LAYERS = 999  # llama-bench's way of saying "every layer"
KEPT_FIELDS = (
    "n_prompt",
    "n_gen",
    "n_depth",
    "avg_ts",
    "stddev_ts",
    "samples_ts",
    "backends",
    "gpu_info",
    "cpu_info",
    "model_type",
    "model_size",
    "n_threads",
    "flash_attn",
    "build_commit",
)


def command(
    bench: Path, gguf: Path, settings: dict[str, Any], workload: dict[str, Any], n_gpu_layers: int, n_threads: int
) -> list[str]:
    """llama-bench with the cell's settings spelled out, so neither side runs on a default the other lacks."""
    line = [
        str(bench),
        "-m",
        str(gguf),
        "-o",
        "json",
        "-p",
        str(workload["prompt_tokens"]),
        "-n",
        str(workload["new_tokens"]),
        "-d",
        f"0,{workload['prompt_tokens']}",
        "-r",
        str(max(workload["repetitions"], 1)),
        "-ngl",
        str(ALL_LAYERS if n_gpu_layers == -1 else n_gpu_layers),
        "-fa",
        "1" if settings["flash_attn"] else "0",
        "-b",
        str(settings["n_batch"]),
        "-ub",
        str(settings["n_ubatch"]),
        "-t",
        str(n_threads),
        "-sm",
        settings["split_mode"],
        "-mg",
        str(settings["main_gpu"]),
        "-nkvo",
        "0" if settings["offload_kqv"] else "1",
    ]
    if settings["tensor_split"]:
        line += ["-ts", "/".join(f"{float(v):g}" for v in settings["tensor_split"])]
    return line


def summarise(rows: list[dict[str, Any]], line: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    """llama-bench's pp and tg rows beside this cell's prefill and decode rates (ratio = cell / llama-bench)."""
    prefills = [r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0]
    decodes = [r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0]
    # pp from an empty context; tg from the prompt's depth (rows of a llama-bench without -d have depth 0)
    prefill = min(prefills, key=lambda r: r.get("n_depth", 0))
    decode = max(decodes, key=lambda r: r.get("n_depth", 0))
    summary: dict[str, Any] = {
        "tool": "llama-bench",
        "command": line,
        "prefill_tokens_per_s": prefill["avg_ts"],
        "prefill_stdev": prefill["stddev_ts"],
        "decode_tokens_per_s": decode["avg_ts"],
        "decode_stdev": decode["stddev_ts"],
        "decode_depth": decode.get("n_depth", 0),
        "raw": [{k: r[k] for k in KEPT_FIELDS if k in r} for r in rows],
    }
    ours = metrics.get("decode_tokens_per_s", {}).get("median")
    if ours:
        summary["decode_ratio"] = ours / decode["avg_ts"]
    ttft = metrics.get("ttft_s", {}).get("median")
    if ttft:
        summary["prefill_ratio"] = (prefill["n_prompt"] / ttft) / prefill["avg_ts"]
    return summary
