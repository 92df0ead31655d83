"""Architectures the tool can materialise as synthetic checkpoints (random weights, real layout).

Each entry is a transformers ``config.json`` body plus the size of the tokenizer
trained for it. Adding an architecture here is all it takes to offer it as
``model: {synthetic: NAME}`` in a matrix.
"""

from __future__ import annotations

from typing import Any

_MISTRAL_COMMON: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    # The config format of transformers 5; also tells transformers that this
    # tokenizer needs none of its fixes for old Mistral tokenizers.
    "transformers_version": "5.0.0",
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # augmxnt/shisa-7b-v1: Mistral-7B with a 120,128-token bilingual vocabulary.
    "shisa-7b-v1": {
        **_MISTRAL_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 120128,
        "max_position_embeddings": 32768,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-5,
    },
    # Same family, small enough for CPU tests (about 0.6 M parameters). Grouped-query attention
    # like shisa's; head_dim 32 because vLLM's CPU attention takes 32 and up, not 16.
    "tiny-mistral": {
        **_MISTRAL_COMMON,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "vocab_size": 4096,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-5,
    },
}


def parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a MistralForCausalLM checkpoint, in file order."""
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    inter = config["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (q_out, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, q_out)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    return shapes


def parameter_count(config: dict[str, Any]) -> int:
    total = 0
    for shape in parameter_shapes(config).values():
        n = 1
        for dim in shape:
            n *= dim
        total += n
    return total
