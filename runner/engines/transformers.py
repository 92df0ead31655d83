"""HF Transformers: the seed table's baseline engine (dtype, grad mode, attention, bitsandbytes, compile)."""

from __future__ import annotations

import json
from typing import Any

from runner.engines.base import Engine, Server, Setting

DTYPE_LABELS = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}
TORCH_DTYPE = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}

SETTINGS = {
    "dtype": Setting("fp32", "weights and activations dtype", ("fp32", "bf16", "fp16")),
    "grad_mode": Setting("default", "autograd context around generate()", ("default", "no_grad", "inference_mode")),
    "attention": Setting(
        "sdpa", "attn_implementation", ("eager", "sdpa", "flash_attention_2", "flash_attention_4")
    ),  # flash_attention_4: the flash-attn-4 package (CuTe DSL kernels), Hopper and newer
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


# What `transformers serve` has no option for: its generation runs under its own autograd context, cache and
# model loading. Said at validation, never silently different from the offline row of the same settings.
NOT_SERVED = {
    "grad_mode": "transformers serve runs generation in its own autograd context; leave grad_mode at default",
    "cache": "transformers serve chooses its KV cache (a paged cache with continuous_batching, the static one "
    "with compile); leave cache at dynamic",
    "bettertransformer": "transformers serve has no BetterTransformer conversion; leave bettertransformer off",
    "bnb_compute_dtype": "transformers serve's --quantization takes no compute dtype; leave bnb_compute_dtype unset",
}


def server_check(settings: dict[str, Any]) -> str | None:
    for name, why in NOT_SERVED.items():
        if settings[name] != SETTINGS[name].default:
            return f"{name}: {why}"
    return None


def exact_length(new_tokens: int) -> dict[str, Any]:
    """transformers serve takes no ignore_eos or min_tokens; a request's generation_config (a JSON string it
    builds the GenerationConfig from) can ask for exactly N greedy tokens."""
    config = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    return {"generation_config": json.dumps(config)}


SERVER = Server(
    entrypoint="serve_transformers.py",
    settings={
        "continuous_batching": Setting(
            True,
            "transformers serve --continuous-batching (paged cache, requests batched); false: one at a time",
            type=bool,
        ),
    },
    request_extras=exact_length,
    forced_length="max_tokens and a generation_config with min_new_tokens = max_new_tokens = N (transformers "
    "serve has no ignore_eos): the end token cannot stop a request before N",
    check=server_check,
)

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def weights_bytes(result: dict[str, Any]) -> int | None:
    """Parameters times the dtype's size; None for bitsandbytes (its packed layout is not recorded)."""
    settings, parameters = result["cell"]["settings"], (result.get("model") or {}).get("parameters")
    if settings.get("quantization", "none") != "none" or not parameters or settings.get("dtype") not in DTYPE_BYTES:
        return None
    return int(parameters) * DTYPE_BYTES[settings["dtype"]]


TRANSFORMERS = Engine(
    name="transformers",
    software="HF Transformers",
    entrypoint="run_transformers.py",
    settings=SETTINGS,
    label=label,
    server=SERVER,
    weights_bytes=weights_bytes,
)
