"""gpt-fast (pytorch-labs/gpt-fast at a pinned commit): bf16 / int8 / int4 weights, torch.compile on or off.

A source tree, not a package: the image clones the pinned commit and sets GPT_FAST_HOME; the
local executor reads GPT_FAST_HOME or <venv>/gpt-fast (`make setup-gptfast`). The cell's
weights are made from the matrix's checkpoint by gpt-fast's own converter and quantize.py
(entrypoints/gptfast_checkpoint.py) and cached in the model store; decoding is gpt-fast's own
prefill / decode_n_tokens with decode_one_token compiled as its generate.py compiles it.
"""

from __future__ import annotations

from typing import Any

from runner.engines.base import Engine, Setting

PRECISIONS = ("bf16", "int8", "int4")
GROUPSIZES = (32, 64, 128, 256)  # gpt-fast's WeightOnlyInt4QuantHandler accepts these
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")

SETTINGS = {
    "precision": Setting(
        "bf16", "weights: bf16 (converted), int8 / int4 weight-only from gpt-fast's quantize.py", PRECISIONS
    ),
    "groupsize": Setting(128, "int4 quantisation group size (int4 only)", GROUPSIZES),
    "compile": Setting(True, "torch.compile decode_one_token, as generate.py --compile does", type=bool),
    "compile_mode": Setting("reduce-overhead", "torch.compile mode (generate.py's: reduce-overhead)", COMPILE_MODES),
    "compile_prefill": Setting(False, "also compile prefill (generate.py --compile_prefill)", type=bool),
}


def label(s: dict[str, Any]) -> list[str]:
    lines = [f"int4 groupsize={s['groupsize']}" if s["precision"] == "int4" else s["precision"]]
    if s["compile"]:
        lines.append(f'torch.compile(mode="{s["compile_mode"]}")')
        if s["compile_prefill"]:
            lines.append("compile_prefill")
    else:
        lines.append("eager")
    return lines


def check(s: dict[str, Any], gpus: tuple[int, ...]) -> str | None:
    if s["precision"] != "int4" and s["groupsize"] != SETTINGS["groupsize"].default:
        return f"groupsize applies to int4 only (precision is {s['precision']}); drop it or set precision: int4"
    if not s["compile"]:
        if s["compile_prefill"]:
            return "compile_prefill needs compile: true"
        if s["compile_mode"] != SETTINGS["compile_mode"].default:
            return f"compile_mode {s['compile_mode']!r} needs compile: true"
    if len(gpus) > 1:
        return f"a gpt-fast cell runs on one GPU (its tensor parallel needs torchrun), got gpus {list(gpus)}"
    return None


def _rate(gb_s: float) -> str:
    return f"{gb_s:.0f} GB/s" if gb_s >= 10 else f"{gb_s:.3g} GB/s"


def notes(result: dict[str, Any]) -> list[str]:
    """Bandwidth achieved (model bytes x tok/s, as gpt-fast prints), generate.py beside it, compile time, int4 path."""
    details = result.get("engine_details") or {}
    notes = []
    if details.get("bandwidth_gb_s"):
        notes.append(f"{_rate(details['bandwidth_gb_s'])} achieved ({details['model_bytes'] / 1e9:.3g} GB weights)")
    reference = result.get("reference") or {}
    if reference.get("tokens_per_s"):
        bandwidth = f", {_rate(reference['bandwidth_gb_s'])}" if reference.get("bandwidth_gb_s") else ""
        notes.append(
            f"generate.py {reference['tokens_per_s']:.2f} tok/s{bandwidth} "
            f"(this row = {reference.get('ratio', float('nan')):.2f}x)"
        )
    if details.get("compile_s"):
        notes.append(f"compile + first run {details['compile_s']:.0f} s (warm-up)")
    packing = (result.get("prepare") or {}).get("int4_packing")
    if packing and packing.get("patched"):
        notes.append(f"int4: quantize.py with uint8 packing for torch {packing['torch'].split('+')[0]} (patched)")
    return notes


GPTFAST = Engine(
    name="gptfast",
    software="gpt-fast",
    entrypoint="run_gptfast.py",
    helpers=("gptfast_checkpoint.py", "gptfast_tool.py", "gptfast_bench.py"),
    settings=SETTINGS,
    label=label,
    check=check,
    recorded_env_prefixes=("GPT_FAST_", "TORCHINDUCTOR_", "TORCH_COMPILE_"),
    notes=notes,
)
