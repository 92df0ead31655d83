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
source checkpoint into the model store's derived folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from runner.models import random_safetensors, synthetic
from runner.models.architectures import parameter_shapes
from runner.models.awq_synthetic import group_size_for, linear_shapes
from runner.models.random_safetensors import Tensor
from runner.shared import build_once

BITS = 4
PACK = 32 // BITS


def gptq_tensors(config: dict[str, Any], group_size: int) -> dict[str, Tensor]:
    """Every tensor of the GPTQ checkpoint (act-order), in file order."""
    linear = linear_shapes(config)
    tensors: dict[str, Tensor] = {}
    for name, shape in parameter_shapes(config).items():
        if name not in linear:
            tensors[name] = Tensor(shape, "F16", "ones" if name.endswith("norm.weight") else "weight")
            continue
        out_features, in_features = shape
        if out_features % PACK or in_features % group_size:
            raise ValueError(f"{name} {shape}: GPTQ needs out % {PACK} == 0 and in % {group_size} == 0")
        base = name.removesuffix(".weight")
        groups = in_features // group_size
        tensors[base + ".qweight"] = Tensor((in_features // PACK, out_features), "I32", "bits")
        tensors[base + ".qzeros"] = Tensor((groups, out_features // PACK), "I32", "bits")
        tensors[base + ".scales"] = Tensor((groups, out_features), "F16", "scale")
        tensors[base + ".g_idx"] = Tensor((in_features,), "I32", "group_index", group_size)
    return tensors


def gptq_config(config: dict[str, Any], group_size: int) -> dict[str, Any]:
    quantization = {
        "quant_method": "gptq",
        "bits": BITS,
        "group_size": group_size,
        "desc_act": True,
        "sym": True,
        "checkpoint_format": "gptq",
    }
    return {**config, "torch_dtype": "float16", "quantization_config": quantization}


def is_gptq_checkpoint(folder: Path) -> bool:
    config = json.loads((Path(folder) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method") == "gptq"


def _key(model: dict[str, Any]) -> str:
    digest = hashlib.sha256(model["fingerprint"].encode())
    for source in (Path(__file__), Path(random_safetensors.__file__)):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _build(folder: Path, source: Path, key: str) -> None:
    config = json.loads((source / "config.json").read_text())
    group_size = group_size_for(config)
    skip = {"config.json", synthetic.MARKER, "model.safetensors.index.json"}
    for path in source.iterdir():
        if path.is_file() and path.name not in skip and path.suffix != ".safetensors":
            shutil.copy2(path, folder / path.name)  # tokenizer and generation config
    full = gptq_config(config, group_size)
    (folder / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    (folder / "quantize_config.json").write_text(json.dumps(full["quantization_config"], indent=2) + "\n")
    files = random_safetensors.write_random_checkpoint(folder, gptq_tensors(config, group_size), synthetic.SEED)
    marker = {
        "synthetic": True,
        "quantization": f"gptq {BITS}-bit, group {group_size}, act-order, symmetric",
        "weights": "random 4-bit codes, zero points and group order; fp16 scales 2^-12..2^-9; "
        "fp16 embeddings/head, norms 1.0",
        "quantised_from": str(source),
        "store_key": key,
        "files": files,
    }
    (folder / synthetic.MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def materialise(model: dict[str, Any], log=print) -> Path:
    """The GPTQ checkpoint of a synthetic model record, built into its derived folder if missing."""
    source = Path(model["path"])
    key = _key(model)
    final = Path(model["derived_dir"]) / "gptq" / f"{source.name}-{key}"
    build_once(
        final,
        lambda scratch: _build(scratch, source, key),
        marker=synthetic.MARKER,
        announce=lambda: log(f"writing a synthetic GPTQ 4-bit checkpoint of {model['name']} into {final}"),
    )
    return final
