"""GPTQ checkpoints for ExLlamaV2 cells of a user's own model: quantised once by GPTQModel, cached in the store.

A cell with ``quant: gptq`` whose checkpoint is not quantised gets one made here
(side_quantiser: once per checkpoint, GPTQModel release and recipe, before the
cell's memory sampling starts): exllamav2_gptq_quantise.py runs in the
quantiser's Python (``EXLLAMAV2_GPTQ_QUANTISER``; the exllamav2 image's
/opt/gptq-quantiser, whose GPTQModel pins another transformers than the engine's
venv has) on the cell's GPU, calibrating on calibration.txt (the text vLLM's AWQ
quantiser uses), so no dataset is downloaded. The output, GPTQ's v1 layout in
``<derived>/gptq-gptqmodel/``, is checked for what ExLlamaV2 reads
(``layout_problems``) before any cell loads it.

Synthetic checkpoints never come here: the runner writes their GPTQ layout
directly (runner/models/gptq_synthetic.py). This file runs inside the engine's
environment and imports nothing from the runner.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from side_quantiser import CALIBRATION, QuantiserMissing, SideQuantiser

__all__ = ["QUANTISER", "QuantiserMissing", "gptq_checkpoint", "layout_problems"]

SAMPLES, TOKENS = 128, 512
PACK = 8  # 4-bit codes per int32
QUANTISER = SideQuantiser(
    tool="GPTQModel",
    package="gptqmodel",
    pin="7.0.0",
    env="EXLLAMAV2_GPTQ_QUANTISER",
    script=Path(__file__).resolve().parent / "exllamav2_gptq_quantise.py",
    folder="gptq-gptqmodel",
    produces="GPTQ 4-bit (act-order)",
    wanted_by="quant=gptq",
    image="the exllamav2 image (it has /opt/gptq-quantiser)",
    export="a GPTQ export",
    args=("--calibration", str(CALIBRATION), "--samples", str(SAMPLES), "--tokens", str(TOKENS)),
    recipe=f"samples={SAMPLES};tokens={TOKENS}",
)


def _headers(folder: Path) -> dict[str, dict[str, Any]]:
    """Every tensor's dtype and shape from the safetensors headers (nothing is read beyond them)."""
    tensors: dict[str, dict[str, Any]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        tensors.update({name: info for name, info in header.items() if name != "__metadata__"})
    return tensors


def layout_problems(folder: Path) -> list[str]:
    """What keeps ExLlamaV2 from reading folder as GPTQ 4-bit: config, and per quantised layer its four
    tensors with consistent shapes (qweight [in/8, out], qzeros [groups, out/8], scales [groups, out],
    g_idx [in]). Empty when it is such a checkpoint."""
    try:
        quant = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError) as exc:
        return [f"config.json unreadable: {exc}"]
    problems = []
    if quant.get("quant_method") != "gptq" or quant.get("bits") != 4:
        problems.append(f"quantization_config is {quant.get('quant_method')} {quant.get('bits')}-bit, not gptq 4-bit")
    tensors = _headers(folder)
    layers = sorted(name[: -len(".qweight")] for name in tensors if name.endswith(".qweight"))
    if not layers:
        return [*problems, "no .qweight tensor in its safetensors"]
    for base in layers:
        parts = {part: tensors.get(f"{base}.{part}") for part in ("qweight", "qzeros", "scales", "g_idx")}
        missing = [part for part, info in parts.items() if info is None]
        if missing:
            problems.append(f"{base}: no {', '.join(missing)}")
            continue
        (packed_in, out), groups = parts["qweight"]["shape"], parts["qzeros"]["shape"][0]
        expected = {
            "qweight": ("I32", [packed_in, out]),
            "qzeros": ("I32", [groups, out // PACK]),
            "scales": ("F16", [groups, out]),
            "g_idx": ("I32", [packed_in * PACK]),
        }
        for part, (dtype, shape) in expected.items():
            if (parts[part]["dtype"], parts[part]["shape"]) != (dtype, shape):
                problems.append(
                    f"{base}.{part}: {parts[part]['dtype']} {parts[part]['shape']}, expected {dtype} {shape}"
                )
    return problems


def gptq_checkpoint(model: dict[str, Any], derived: Path) -> tuple[Path, dict[str, Any]]:
    """The model's GPTQ checkpoint, quantised now unless the store has it, checked, and where it came from."""
    path, record = QUANTISER.checkpoint(model, derived)
    problems = layout_problems(path)
    if problems:
        raise RuntimeError(f"GPTQModel's output in {path} is not what ExLlamaV2 reads: {'; '.join(problems[:3])}")
    return path, {"gptq_checkpoint": record.pop("checkpoint"), **record}
