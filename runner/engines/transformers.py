"""HF Transformers: the seed table's baseline engine (dtype, grad mode, attention, bitsandbytes, compile)."""

from __future__ import annotations

from typing import Any

from runner.engines.base import Engine, Setting

DTYPE_LABELS = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}
TORCH_DTYPE = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}

SETTINGS = {
    "dtype": Setting("fp32", "weights and activations dtype", ("fp32", "bf16", "fp16")),
    "grad_mode": Setting("default", "autograd context around generate()", ("default", "no_grad", "inference_mode")),
    "attention": Setting("sdpa", "attn_implementation", ("eager", "sdpa", "flash_attention_2")),
    "quantization": Setting("none", "bitsandbytes weight quantization", ("none", "bnb-8bit", "bnb-4bit")),
    "bnb_compute_dtype": Setting(None, "bnb_4bit_compute_dtype (bnb-4bit only)", (None, "fp32", "bf16", "fp16")),
    "compile": Setting(False, "torch.compile the model's forward", type=bool),
    "cache": Setting("dynamic", "KV cache implementation", ("dynamic", "static")),
    "bettertransformer": Setting(False, "optimum BetterTransformer conversion", type=bool),
}


def label(s: dict[str, Any]) -> list[str]:
    lines = [DTYPE_LABELS[s["dtype"]]]
    if s["quantization"] != "none":
        lines.append(f"load_in_{s['quantization'][4]}bit=True")
    if s["bnb_compute_dtype"]:
        bits = s["quantization"][4] if s["quantization"] != "none" else "4"
        lines.append(f"bnb_{bits}bit_compute_dtype={TORCH_DTYPE[s['bnb_compute_dtype']]}")
    if s["compile"]:
        lines.append("torch.compile()")
    if s["grad_mode"] != "default":
        lines.append(f"torch.{s['grad_mode']}()")
    lines.append(f"attn_implementation={s['attention']}")
    if s["cache"] == "static":
        lines.append("static KV cache")
    if s["bettertransformer"]:
        lines.append("BetterTransformer")
    return lines


TRANSFORMERS = Engine(
    name="transformers",
    software="HF Transformers",
    entrypoint="run_transformers.py",
    settings=SETTINGS,
    label=label,
)
