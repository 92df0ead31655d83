"""Checkpoints a cell reads instead of the matrix's, made on the host: one hook for every engine.

An engine description names the kind of checkpoint a cell needs
(``Engine.derived_checkpoint``: settings -> kind, e.g. ``"awq"`` for vLLM's AWQ
cells). Each kind has a maker here that says which model records it converts
and writes the converted folder into the store's derived folder, once
(runner.shared.build_once). Today those are a synthetic model's AWQ and GPTQ layouts;
the next engines add theirs as one more entry.

What a maker leaves alone, the cell gets as it is: a checkpoint already in that
format, or a real checkpoint that the engine's own tools convert inside its
environment (llm-compressor's AWQ, llama.cpp's GGUF, ExLlamaV2's EXL2), with the
same build-once helper, cached in the same derived folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.models import awq_synthetic, gptq_synthetic
from runner.models.fingerprint import fingerprint

ModelRecord = dict[str, Any]


@dataclass(frozen=True)
class Maker:
    label: str  # appended to the model's name in results and tables
    converts: Callable[[ModelRecord], bool]  # which model records this maker converts
    make: Callable[[ModelRecord, Callable[[str], None]], Path]  # (model, log) -> the converted folder


def _synthetic_not_awq(model: ModelRecord) -> bool:
    return bool(model.get("synthetic")) and not awq_synthetic.is_awq_checkpoint(Path(model["path"]))


def _synthetic_not_gptq(model: ModelRecord) -> bool:
    return bool(model.get("synthetic")) and not gptq_synthetic.is_gptq_checkpoint(Path(model["path"]))


MAKERS: dict[str, Maker] = {
    "awq": Maker("AWQ 4-bit", _synthetic_not_awq, awq_synthetic.materialise),
    "gptq": Maker("GPTQ 4-bit", _synthetic_not_gptq, gptq_synthetic.materialise),
}


def cell_model(kind: str | None, model: ModelRecord, log: Callable[[str], None] = print) -> ModelRecord:
    """The model record a cell reads: the matrix's, or its derived checkpoint of this kind."""
    if kind is None:
        return model
    if kind not in MAKERS:
        raise ValueError(f"no maker for derived checkpoints of kind {kind!r}; known: {', '.join(sorted(MAKERS))}")
    maker = MAKERS[kind]
    if not maker.converts(model):
        return model
    folder = maker.make(model, log)
    return {
        **model,
        "name": f"{model['name']} ({maker.label})",
        "path": str(folder),
        "fingerprint": fingerprint(folder),
        "derived_from": model["path"],
    }
