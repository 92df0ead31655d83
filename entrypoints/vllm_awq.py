"""AWQ checkpoints for vLLM cells of a user's own model: quantised once by llm-compressor, cached in the store.

A cell with ``quantization: awq`` whose checkpoint is not quantised gets one
made here, before the cell's memory sampling starts: vllm_awq_quantise.py runs
in the quantiser's Python (``VLLM_AWQ_QUANTISER``; the vllm image's
/opt/awq-quantiser, whose llm-compressor pins another compressed-tensors than
vLLM) on the cell's GPUs, calibrating on vllm_awq_calibration.txt (140 KB of
CPython 3.11's language reference, PSF License: the source of the synthetic
tokenizer's corpus, runner/models/corpus/), so no dataset is downloaded. The result
lives in ``<derived>/awq-llm-compressor/<model>-<key>/``, where the key hashes
the checkpoint's fingerprint, the quantiser's release, this recipe and the
calibration text: a second cell (or run) quantises nothing. shared.build_once
writes it under a scratch name and renames it into place, under a file lock, so
concurrent cells build it once. The output is a compressed-tensors checkpoint, which vLLM reads
by its own config (the cell then passes no ``quantization`` name to vLLM).

Synthetic checkpoints never come here: the runner writes their AWQ layout
directly (runner/models/awq_synthetic.py). This file runs inside the engine's
environment and imports nothing from the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from shared import build_once

HERE = Path(__file__).resolve().parent
QUANTISE_SCRIPT = HERE / "vllm_awq_quantise.py"
CALIBRATION = HERE / "vllm_awq_calibration.txt"
SAMPLES, TOKENS = 64, 512
RECORD = "quantised_by.json"
LOG_TAIL_CHARS = 1500


class QuantiserMissing(RuntimeError):
    """No Python with llm-compressor to quantise with; the message says how to get one."""


def checkpoint_quantisation(model_path: Path) -> str | None:
    """The quant_method a checkpoint's config.json declares (awq, compressed-tensors, gptq, ...), or None."""
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("quantization_config") or {}).get("quant_method")


def quantiser_python() -> str:
    python = os.environ.get("VLLM_AWQ_QUANTISER")
    if not python:
        raise QuantiserMissing(
            "quantization=awq on an unquantised checkpoint needs llm-compressor, and VLLM_AWQ_QUANTISER is not set: "
            "use the vllm image (it has /opt/awq-quantiser), set VLLM_AWQ_QUANTISER to a Python with "
            "llmcompressor==0.14.0.1, or point model.path at an AWQ export"
        )
    if not shutil.which(python):
        raise QuantiserMissing(f"VLLM_AWQ_QUANTISER={python} is not an executable Python")
    return python


def quantiser_version(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('llmcompressor'))"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        raise QuantiserMissing(f"VLLM_AWQ_QUANTISER={python} has no llm-compressor ({last})")
    return done.stdout.strip()


def cache_key(fingerprint: str, version: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(f"llmcompressor=={version};samples={SAMPLES};tokens={TOKENS}".encode())
    digest.update(QUANTISE_SCRIPT.read_bytes())
    digest.update(CALIBRATION.read_bytes())
    return digest.hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _quantise(python: str, source: Path, scratch: Path, log_path: Path) -> None:
    command = [
        python,
        str(QUANTISE_SCRIPT),
        "--model",
        str(source),
        "--output",
        str(scratch),
        "--calibration",
        str(CALIBRATION),
        "--samples",
        str(SAMPLES),
        "--tokens",
        str(TOKENS),
    ]
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip().splitlines()
        raise RuntimeError(
            f"llm-compressor AWQ failed (exit {done.returncode}): {tail[-1] if tail else ''} (log: {log_path})"
        )


def awq_checkpoint(model: dict[str, Any], derived: Path) -> tuple[Path, dict[str, Any]]:
    """The model's AWQ checkpoint, quantised now unless the store has it, and a record of where it came from."""
    python = quantiser_python()
    version = quantiser_version(python)
    source = Path(model["path"])
    key = cache_key(model.get("fingerprint") or str(source), version)
    final = derived / "awq-llm-compressor" / f"{_safe(model.get('name') or source.name)}-{key}"
    timing: dict[str, float] = {}

    def quantise(scratch: Path) -> None:
        print(f"quantising {source} to AWQ 4-bit with llm-compressor {version} into {final}", flush=True)
        t0 = time.perf_counter()
        _quantise(python, source, scratch, final.parent / f"{final.name}.log")
        timing["seconds"] = round(time.perf_counter() - t0, 1)

    built_now = build_once(final, quantise, marker=RECORD)
    record = json.loads((final / RECORD).read_text())
    return final, {
        "awq_checkpoint": str(final),
        "cache_hit": not built_now,
        "seconds": timing.get("seconds"),
        "quantised_by": record,
    }
