"""An AWQ 4-bit checkpoint of a synthetic model, written directly in AWQ's layout with random codes.

A real AWQ checkpoint (AutoAWQ's GEMM format, what vLLM's ``awq`` and
``awq_marlin`` load) keeps embeddings, norms and the LM head in fp16 and
replaces each linear layer's ``weight`` [out, in] by three tensors:

* ``qweight`` int32 [in, out / 8]: eight 4-bit codes per word;
* ``qzeros``  int32 [in / group, out / 8]: one packed 4-bit zero point per group;
* ``scales``  fp16  [in / group, out]: one scale per group and output.

config.json carries ``quantization_config`` (quant_method awq, bits 4,
group_size, zero_point, version gemm). Codes and zero points here are random
words, scales positive and small, so dequantised weights ((code - zero) *
scale) have a trained model's magnitude. Speed does not depend on the values
(generation is forced to N tokens), and the engine loads, repacks and runs it
exactly as it would a calibrated one. Built once per source checkpoint into
the model store's derived folder, like the GGUF files (runner.models.quantised_synthetic
does what the AWQ and GPTQ layouts share).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.models import quantised_synthetic
from runner.models.quantised_synthetic import BITS, PACK, Layout
from runner.models.random_safetensors import Tensor


def _linear(base: str, out_features: int, in_features: int, group_size: int) -> dict[str, Tensor]:
    return {
        base + ".qweight": Tensor((in_features, out_features // PACK), "I32", "bits"),
        base + ".qzeros": Tensor((in_features // group_size, out_features // PACK), "I32", "bits"),
        base + ".scales": Tensor((in_features // group_size, out_features), "F16", "scale"),
    }


def _quantization(group_size: int) -> dict[str, Any]:
    return {
        "quant_method": "awq",
        "bits": BITS,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }


LAYOUT = Layout(
    method="awq",
    name="AWQ",
    source=Path(__file__),
    linear=_linear,
    quantization=_quantization,
    description=lambda group_size: {
        "quantization": f"awq {BITS}-bit, group {group_size}, zero point (GEMM layout)",
        "weights": "random 4-bit codes and zero points, fp16 scales 2^-12..2^-9; fp16 embeddings/head, norms 1.0",
    },
)


def group_size_for(config: dict[str, Any]) -> int:
    """The largest usual group size that divides every quantised layer's input size."""
    return quantised_synthetic.group_size_for(config, LAYOUT.name)


def awq_tensors(config: dict[str, Any], group_size: int) -> dict[str, Tensor]:
    """Every tensor of the AWQ checkpoint, in file order."""
    return quantised_synthetic.tensors(LAYOUT, config, group_size)


def awq_config(config: dict[str, Any], group_size: int) -> dict[str, Any]:
    return quantised_synthetic.full_config(LAYOUT, config, group_size)


def is_awq_checkpoint(folder: Path) -> bool:
    return quantised_synthetic.is_checkpoint(folder, LAYOUT.method)


def materialise(model: dict[str, Any], log=print) -> Path:
    """The AWQ checkpoint of a synthetic model record, built into its derived folder if missing."""
    return quantised_synthetic.materialise(LAYOUT, model, log)
