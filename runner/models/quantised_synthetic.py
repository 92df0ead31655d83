"""A synthetic model's checkpoint in a 4-bit weight-only layout (AWQ, GPTQ), written once with random codes.

What every such layout shares: embeddings, norms and the LM head stay fp16
(norms 1.0); each linear layer's ``weight`` [out, in] is replaced by the
layout's packed tensors, one group of ``group_size`` inputs per scale;
config.json carries ``quantization_config``; tokenizer and generation config
are copied; the folder is built once per source checkpoint into the store's
derived folder (runner.shared.build_once), keyed by the source's fingerprint
and the code that writes it. A layout module (awq_synthetic, gptq_synthetic)
says only what differs: its tensors per linear layer, its quantization_config,
its extra files and its words in synthetic.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.models import random_safetensors, synthetic
from runner.models.architectures import parameter_shapes
from runner.models.fingerprint import settle
from runner.models.random_safetensors import Tensor
from runner.shared import build_once

BITS = 4
PACK = 32 // BITS
QUANTISED_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP_SIZES = (128, 64, 32)  # the usual 128 where every layer's input divides by it


@dataclass(frozen=True)
class Layout:
    method: str  # quant_method in config.json; also the derived folder's name
    name: str  # in messages: "AWQ", "GPTQ"
    source: Path  # the layout module's file: its text enters the store key
    # (layer base name, out features, in features, group size) -> the tensors replacing base.weight
    linear: Callable[[str, int, int, int], dict[str, Tensor]]
    quantization: Callable[[int], dict[str, Any]]  # group size -> quantization_config
    description: Callable[[int], dict[str, str]]  # group size -> synthetic.json's quantization and weights
    # quantization_config -> more files to write beside config.json (name -> text)
    extra_files: Callable[[dict[str, Any]], dict[str, str]] = field(default=lambda quantization: {})


def linear_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        name: shape
        for name, shape in parameter_shapes(config).items()
        if name.endswith(".weight") and name.split(".")[-2] in QUANTISED_LAYERS
    }


def group_size_for(config: dict[str, Any], name: str) -> int:
    """The largest usual group size that divides every quantised layer's input size."""
    inputs = {shape[1] for shape in linear_shapes(config).values()}
    for size in GROUP_SIZES:
        if all(n % size == 0 for n in inputs):
            return size
    raise ValueError(f"no {name} group size in {GROUP_SIZES} divides the layer inputs {sorted(inputs)}")


def tensors(layout: Layout, config: dict[str, Any], group_size: int) -> dict[str, Tensor]:
    """Every tensor of the layout's checkpoint, in file order."""
    linear = linear_shapes(config)
    found: dict[str, Tensor] = {}
    for name, shape in parameter_shapes(config).items():
        if name not in linear:
            found[name] = Tensor(shape, "F16", "ones" if name.endswith("norm.weight") else "weight")
            continue
        out_features, in_features = shape
        if out_features % PACK or in_features % group_size:
            raise ValueError(f"{name} {shape}: {layout.name} needs out % {PACK} == 0 and in % {group_size} == 0")
        found.update(layout.linear(name.removesuffix(".weight"), out_features, in_features, group_size))
    return found


def full_config(layout: Layout, config: dict[str, Any], group_size: int) -> dict[str, Any]:
    return {**config, "torch_dtype": "float16", "quantization_config": layout.quantization(group_size)}


def is_checkpoint(folder: Path, method: str) -> bool:
    config = json.loads((Path(folder) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method") == method


def _key(layout: Layout, model: dict[str, Any]) -> str:
    digest = hashlib.sha256(model["fingerprint"].encode())
    for source in (layout.source, Path(__file__), Path(random_safetensors.__file__)):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _build(layout: Layout, folder: Path, source: Path, key: str) -> None:
    config = json.loads((source / "config.json").read_text())
    group_size = group_size_for(config, layout.name)
    skip = {"config.json", synthetic.MARKER, "model.safetensors.index.json"}
    for path in source.iterdir():
        if path.is_file() and path.name not in skip and path.suffix != ".safetensors":
            shutil.copy2(path, folder / path.name)  # tokenizer and generation config
    full = full_config(layout, config, group_size)
    (folder / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    for name, text in layout.extra_files(full["quantization_config"]).items():
        (folder / name).write_text(text)
    files = random_safetensors.write_random_checkpoint(folder, tensors(layout, config, group_size), synthetic.SEED)
    marker = {
        "synthetic": True,
        **layout.description(group_size),
        "quantised_from": str(source),
        "store_key": key,
        "files": files,
    }
    (folder / synthetic.MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    settle(folder)  # the same fingerprint on every machine


def materialise(layout: Layout, model: dict[str, Any], log=print) -> Path:
    """The layout's checkpoint of a synthetic model record, built into its derived folder if missing."""
    source = Path(model["path"])
    key = _key(layout, model)
    final = Path(model["derived_dir"]) / layout.method / f"{source.name}-{key}"
    build_once(
        final,
        lambda scratch: _build(layout, scratch, source, key),
        marker=synthetic.MARKER,
        announce=lambda: log(
            f"writing a synthetic {layout.name} {BITS}-bit checkpoint of {model['name']} into {final}"
        ),
    )
    return final
