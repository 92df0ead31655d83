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
the model store's derived folder, like the GGUF files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from runner.models import random_safetensors, synthetic
from runner.models.architectures import parameter_shapes
from runner.models.random_safetensors import Tensor
from runner.shared import build_once

BITS = 4
PACK = 32 // BITS
QUANTISED_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP_SIZES = (128, 64, 32)  # AWQ's usual 128 where every layer's input divides by it


def group_size_for(config: dict[str, Any]) -> int:
    """The largest usual group size that divides every quantised layer's input size."""
    inputs = {shape[1] for shape in linear_shapes(config).values()}
    for size in GROUP_SIZES:
        if all(n % size == 0 for n in inputs):
            return size
    raise ValueError(f"no AWQ group size in {GROUP_SIZES} divides the layer inputs {sorted(inputs)}")


def linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        name: shape
        for name, shape in parameter_shapes(config).items()
        if name.endswith(".weight") and name.split(".")[-2] in QUANTISED_LAYERS
    }


def awq_tensors(config: dict[str, Any], group_size: int) -> dict[str, Tensor]:
    """Every tensor of the AWQ checkpoint, in file order."""
    linear = linear_shapes(config)
    tensors: dict[str, Tensor] = {}
    for name, shape in parameter_shapes(config).items():
        if name not in linear:
            tensors[name] = Tensor(shape, "F16", "ones" if name.endswith("norm.weight") else "weight")
            continue
        out_features, in_features = shape
        if out_features % PACK or in_features % group_size:
            raise ValueError(f"{name} {shape}: AWQ needs out % {PACK} == 0 and in % {group_size} == 0")
        base = name.removesuffix(".weight")
        tensors[base + ".qweight"] = Tensor((in_features, out_features // PACK), "I32", "bits")
        tensors[base + ".qzeros"] = Tensor((in_features // group_size, out_features // PACK), "I32", "bits")
        tensors[base + ".scales"] = Tensor((in_features // group_size, out_features), "F16", "scale")
    return tensors


def awq_config(config: dict[str, Any], group_size: int) -> dict[str, Any]:
    quantization = {
        "quant_method": "awq",
        "bits": BITS,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    return {**config, "torch_dtype": "float16", "quantization_config": quantization}


def is_awq_checkpoint(folder: Path) -> bool:
    config = json.loads((Path(folder) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method") == "awq"


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
    (folder / "config.json").write_text(json.dumps(awq_config(config, group_size), indent=2) + "\n")
    files = random_safetensors.write_random_checkpoint(folder, awq_tensors(config, group_size), synthetic.SEED)
    marker = {
        "synthetic": True,
        "quantization": f"awq {BITS}-bit, group {group_size}, zero point (GEMM layout)",
        "weights": "random 4-bit codes and zero points, fp16 scales 2^-12..2^-9; fp16 embeddings/head, norms 1.0",
        "quantised_from": str(source),
        "store_key": key,
        "files": files,
    }
    (folder / synthetic.MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def materialise(model: dict[str, Any], log=print) -> Path:
    """The AWQ checkpoint of a synthetic model record, built into its derived folder if missing."""
    source = Path(model["path"])
    key = _key(model)
    final = Path(model["derived_dir"]) / "awq" / f"{source.name}-{key}"
    build_once(
        final,
        lambda scratch: _build(scratch, source, key),
        marker=synthetic.MARKER,
        announce=lambda: log(f"writing a synthetic AWQ 4-bit checkpoint of {model['name']} into {final}"),
    )
    return final
