"""AWQ checkpoints for vLLM cells of a user's own model: quantised once by llm-compressor, cached in the store.

A cell with ``quantization: awq`` whose checkpoint is not quantised gets one
made here (side_quantiser: once per checkpoint, release and recipe, before the
cell's memory sampling starts): vllm_awq_quantise.py runs in the quantiser's
Python (``VLLM_AWQ_QUANTISER``; the vllm image's /opt/awq-quantiser, whose
llm-compressor pins another compressed-tensors than vLLM) on the cell's GPUs,
calibrating on calibration.txt (140 KB of CPython 3.11's language reference,
PSF License: the source of the synthetic tokenizer's corpus,
runner/models/corpus/), so no dataset is downloaded. The output is a
compressed-tensors checkpoint in ``<derived>/awq-llm-compressor/``, which vLLM
reads by its own config (the cell then passes no ``quantization`` name to vLLM).

Synthetic checkpoints never come here: the runner writes their AWQ layout
directly (runner/models/awq_synthetic.py). This file runs inside the engine's
environment and imports nothing from the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from side_quantiser import CALIBRATION, QuantiserMissing, SideQuantiser, checkpoint_quantisation

__all__ = ["QUANTISER", "QuantiserMissing", "awq_checkpoint", "cache_key", "checkpoint_quantisation"]

SAMPLES, TOKENS = 64, 512
QUANTISER = SideQuantiser(
    tool="llm-compressor",
    package="llmcompressor",
    pin="0.14.0.1",
    env="VLLM_AWQ_QUANTISER",
    script=Path(__file__).resolve().parent / "vllm_awq_quantise.py",
    folder="awq-llm-compressor",
    produces="AWQ 4-bit",
    wanted_by="quantization=awq",
    image="the vllm image (it has /opt/awq-quantiser)",
    export="an AWQ export",
    args=("--calibration", str(CALIBRATION), "--samples", str(SAMPLES), "--tokens", str(TOKENS)),
    recipe=f"samples={SAMPLES};tokens={TOKENS}",
)


def cache_key(fingerprint: str, version: str) -> str:
    return QUANTISER.cache_key(fingerprint, version)


def awq_checkpoint(model: dict[str, Any], derived: Path) -> tuple[Path, dict[str, Any]]:
    """The model's AWQ checkpoint, quantised now unless the store has it, and a record of where it came from."""
    path, record = QUANTISER.checkpoint(model, derived)
    return path, {"awq_checkpoint": record.pop("checkpoint"), **record}
