"""A GPTQ 4-bit checkpoint of a synthetic model, written directly in GPTQ's layout with random codes.

A real GPTQ checkpoint (AutoGPTQ / GPTQModel's ``gptq`` format, what ExLlamaV2
and vLLM load) keeps embeddings, norms and the LM head in fp16 and replaces
each linear layer's ``weight`` [out, in] by four tensors:

* ``qweight`` int32 [in / 8, out]: eight 4-bit codes per word, packed along the input;
* ``qzeros``  int32 [in / group, out / 8]: one packed 4-bit zero point per group;
* ``scales``  fp16  [in / group, out]: one scale per group and output;
* ``g_idx``   int32 [in]: each input channel's group; with act-order (desc_act)
  the channels of a group are scattered, so the engine must permute the input
  (ExLlamaV2 builds its q_perm from it), which is what act-order costs.

config.json carries ``quantization_config`` (quant_method gptq, bits 4,
group_size, desc_act, sym). Codes, zero points and the group order are random,
scales positive and small, as in the synthetic AWQ checkpoint
(runner.models.awq_synthetic): speed does not depend on the values, and the
engine loads, repacks and runs it as it would a calibrated one. Built once per
source checkpoint into the model store's derived folder (by
runner.models.quantised_synthetic, as the AWQ layout is).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.models import quantised_synthetic
from runner.models.quantised_synthetic import BITS, PACK, Layout
from runner.models.random_safetensors import Tensor


def _linear(base: str, out_features: int, in_features: int, group_size: int) -> dict[str, Tensor]:
    groups = in_features // group_size
    return {
        base + ".qweight": Tensor((in_features // PACK, out_features), "I32", "bits"),
        base + ".qzeros": Tensor((groups, out_features // PACK), "I32", "bits"),
        base + ".scales": Tensor((groups, out_features), "F16", "scale"),
        base + ".g_idx": Tensor((in_features,), "I32", "group_index", group_size),
    }


def _quantization(group_size: int) -> dict[str, Any]:
    return {
        "quant_method": "gptq",
        "bits": BITS,
        "group_size": group_size,
        "desc_act": True,
        "sym": True,
        "checkpoint_format": "gptq",
    }


LAYOUT = Layout(
    method="gptq",
    name="GPTQ",
    source=Path(__file__),
    linear=_linear,
    quantization=_quantization,
    description=lambda group_size: {
        "quantization": f"gptq {BITS}-bit, group {group_size}, act-order, symmetric",
        "weights": "random 4-bit codes, zero points and group order; fp16 scales 2^-12..2^-9; "
        "fp16 embeddings/head, norms 1.0",
    },
    # AutoGPTQ's convention, beside config.json's copy
    extra_files=lambda quantization: {"quantize_config.json": json.dumps(quantization, indent=2) + "\n"},
)


def gptq_tensors(config: dict[str, Any], group_size: int) -> dict[str, Tensor]:
    """Every tensor of the GPTQ checkpoint (act-order), in file order."""
    return quantised_synthetic.tensors(LAYOUT, config, group_size)


def gptq_config(config: dict[str, Any], group_size: int) -> dict[str, Any]:
    return quantised_synthetic.full_config(LAYOUT, config, group_size)


def is_gptq_checkpoint(folder: Path) -> bool:
    return quantised_synthetic.is_checkpoint(folder, LAYOUT.method)


def materialise(model: dict[str, Any], log=print) -> Path:
    """The GPTQ checkpoint of a synthetic model record, built into its derived folder if missing."""
    return quantised_synthetic.materialise(LAYOUT, model, log)
