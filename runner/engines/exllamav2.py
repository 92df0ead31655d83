"""ExLlamaV2: EXL2 (any bits per weight, made by its own converter) or GPTQ 4-bit, KV cache type, context, CUDA graphs.

Two of ExLlamaV2's generators can drive a cell (``generator``): the dynamic one
(its recommended API) and the streaming one, which runs one sequence token by
token as its speed test does. EXL2 cells convert the matrix's checkpoint with ExLlamaV2's own converter in the
cell (entrypoints/exllamav2_convert.py): one measurement pass per checkpoint and
calibration size, then one quantisation per bit rate, all cached in the model
store. GPTQ cells read a GPTQ checkpoint: a synthetic model's is written by the
runner (``derived_checkpoint``: runner.models.gptq_synthetic, random 4-bit codes
in GPTQ's act-order layout), a real GPTQ export is read as it is, and a user's
unquantised checkpoint is quantised once in the cell by GPTQModel in its own
venv (entrypoints/exllamav2_gptq.py), cached in the model store. ExLlamaV2 is
CUDA-only: CPU cells are reported as not run here.
"""

from __future__ import annotations

from typing import Any

from runner.engines.base import Engine, Setting

QUANTS = ("exl2", "gptq")
CACHES = ("fp16", "q8", "q6", "q4")
GENERATORS = ("dynamic", "streaming")
HEAD_BITS = (6, 8)  # the converter's head-layer options (ExLlamaV2's qparams_headoptions, above 4 bits)
# ExLlamaV2's converter defaults (convert.py): tokens per calibration row, for the measurement pass
# and for the quantisation pass. Its built-in calibration set (standard_cal_data, used when no dataset
# is given, as here) fixes the number of rows, 19 to measure and 115 to quantise, and ignores the
# converter's row options (-mr, -r), so they are not settings here.
CALIBRATION_DEFAULTS = {"measurement_length": 2048, "length": 2048}

SETTINGS = {
    "quant": Setting("exl2", "weights: EXL2 made by ExLlamaV2's converter, or a GPTQ 4-bit checkpoint", QUANTS),
    "bits": Setting(4.125, "EXL2 target bits per weight (2-8; the converter's default 4.125)", type=(float, int)),
    "head_bits": Setting(6, "EXL2 bits of the LM head (the converter's default 6)", HEAD_BITS),
    "measurement_length": Setting(
        2048, "EXL2 measurement pass: tokens per row of ExLlamaV2's calibration set (19 rows)", type=int
    ),
    "length": Setting(
        2048, "EXL2 quantisation pass: tokens per row of ExLlamaV2's calibration set (115 rows)", type=int
    ),
    "cache": Setting("fp16", "KV cache: FP16, or ExLlamaV2's Q8 / Q6 / Q4 quantised cache", CACHES),
    "max_seq_len": Setting(
        None, "context (cache) size; null = prompt + new tokens, rounded up to 256", type=(int, type(None))
    ),
    "cuda_graphs": Setting(True, "ExLlamaV2's CUDA graphs for single-token forward passes", type=bool),
    "generator": Setting(
        "dynamic",
        "ExLlamaV2's generator: dynamic (job queue; paged with flash-attn) or streaming (one sequence, "
        "token by token through model.forward, as its speed test loops)",
        GENERATORS,
    ),
}


def _bits(value: float) -> str:
    text = f"{float(value):g}"
    return text if "." in text else f"{text}.0"


def label(s: dict[str, Any]) -> list[str]:
    if s["quant"] == "gptq":
        lines = ["GPTQ 4-bit"]
    else:
        lines = [f"EXL2 {_bits(s['bits'])} bpw"]
        if s["head_bits"] != 6:
            lines.append(f"head {s['head_bits']} bits")
        calibration = {k: s[k] for k in CALIBRATION_DEFAULTS}
        if calibration != CALIBRATION_DEFAULTS:
            lines.append(f"calibration rows of {s['measurement_length']} (measure), {s['length']} (quantise) tokens")
    if s["cache"] != "fp16":
        lines.append(f"{s['cache'].upper()} cache")
    if s["max_seq_len"] is not None:
        lines.append(f"max_seq_len={s['max_seq_len']}")
    if not s["cuda_graphs"]:
        lines.append("no CUDA graphs")
    if s["generator"] != "dynamic":
        lines.append(f"{s['generator']} generator")
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    if s["quant"] == "exl2" and not 2 <= s["bits"] <= 8:
        return f"bits must be between 2 and 8 (EXL2 bits per weight), got {s['bits']}"
    for name in CALIBRATION_DEFAULTS:
        if s[name] < 1:
            return f"{name} must be at least 1, got {s[name]}"
    if s["length"] > 2048 or s["measurement_length"] > 2048:
        return "length and measurement_length above 2048 tokens are refused here (ExLlamaV2 warns of excessive VRAM)"
    if s["max_seq_len"] is not None and s["max_seq_len"] < 1:
        return f"max_seq_len must be at least 1 (or null for automatic), got {s['max_seq_len']}"
    if len(gpus) > 1:
        return "this tool runs ExLlamaV2 cells on one GPU (its autosplit / tensor parallel are not wired)"
    return None


def derived_checkpoint(s: dict[str, Any]) -> str | None:
    """GPTQ cells on a synthetic model read its GPTQ layout (a real one is read as it is, or quantised in the cell)."""
    return "gptq" if s["quant"] == "gptq" else None


def notes(result: dict[str, Any]) -> list[str]:
    """Which weights ran (the converter's measured bits per weight, or the GPTQ layout), and the cache."""
    details = result.get("engine_details") or {}
    lines = []
    if details.get("weights"):
        lines.append(details["weights"])
    reference = result.get("reference") or {}
    if reference.get("warmup_ratio"):
        lines.append(
            f"first pass at each length (the warm-up) {reference['warmup_tokens_per_s']:.1f} tok/s "
            f"= {reference['warmup_ratio']:.2f}x the speed test, which also visits each length once"
        )
    prepare = result.get("prepare") or {}
    if prepare.get("measurement") == "cached":
        lines.append("EXL2 measurement from the store")
    quantised = prepare.get("quantised_by") or {}
    if quantised.get("quantiser"):
        made = "from the store" if prepare.get("cache_hit") else f"made in {prepare.get('seconds')} s"
        lines.append(f"GPTQ by {quantised['quantiser']} {quantised.get('gptqmodel')} ({made})")
    return lines


EXLLAMAV2 = Engine(
    name="exllamav2",
    software="ExLlamaV2",
    entrypoint="run_exllamav2.py",
    helpers=(
        "exllamav2_convert.py",
        "exllamav2_speed.py",
        "exllamav2_gptq.py",
        "exllamav2_gptq_quantise.py",
    ),
    settings=SETTINGS,
    label=label,
    check=check,
    derived_checkpoint=derived_checkpoint,
    recorded_env_prefixes=("EXLLAMA", "TORCH_CUDA_ARCH_LIST", "TORCH_EXTENSIONS_DIR"),
    notes=notes,
)
