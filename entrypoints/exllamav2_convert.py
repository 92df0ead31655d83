"""EXL2 checkpoints for ExLlamaV2 cells, made by ExLlamaV2's own converter and cached in the model store.

ExLlamaV2's converter (``exllamav2.conversion.convert_exl2``, what its
convert.py runs) works in two passes. The measurement pass quantises every
layer at each candidate setting and measures the error over calibration rows;
it depends on the checkpoint and the calibration size only, so it runs once
(``-om``) and its small JSON is kept. Each bit rate then reuses it (``-m``):
the optimiser picks per-layer settings for the target bits per weight and the
quantisation pass writes the EXL2 model (``-cf``: weights plus config and
tokenizer). Both passes use ExLlamaV2's built-in calibration set (its
standard_cal_data, what convert.py uses when no dataset is given).

Files live in ``<derived>/exl2/<model>-<key>/``: ``measurement-l<tokens>.json``
and ``<bits>bpw-h<head>-m<tokens>-q<tokens>/`` (tokens per calibration row of each pass; the
built-in set fixes the rows), where the key hashes the
checkpoint's fingerprint and the ExLlamaV2 release. Each pass works in a
folder of the same name with ``work-`` before it, which the converter resumes
from (its job file) when a cell was stopped mid-pass, so a long measurement
can be carried over several runs; shared.build_once renames each finished
result into place under a lock.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, run_logged

CONVERTER = "exllamav2.conversion.convert_exl2"
CALIBRATION = "ExLlamaV2's built-in calibration set (standard_cal_data)"
MARKER = "config.json"  # the converter copies the config into the compiled folder last


def cache_key(fingerprint: str, exllamav2_version: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(exllamav2_version.encode())
    return digest.hexdigest()[:16]


def bits_name(bits: float) -> str:
    text = f"{float(bits):g}"
    return text if "." in text else f"{text}.0"


def measurement_command(source: Path, work: Path, output: Path, s: dict[str, Any]) -> list[str]:
    return [
        sys.executable, "-m", CONVERTER,
        "-i", str(source), "-o", str(work), "-om", str(output),
        "-ml", str(s["measurement_length"]),
    ]  # fmt: skip


def quantise_command(source: Path, work: Path, measurement: Path, output: Path, s: dict[str, Any]) -> list[str]:
    return [
        sys.executable, "-m", CONVERTER,
        "-i", str(source), "-o", str(work), "-m", str(measurement), "-cf", str(output),
        "-b", f"{float(s['bits']):g}", "-hb", str(s["head_bits"]),
        "-l", str(s["length"]),
    ]  # fmt: skip


def converter_error(log_text: str) -> str | None:
    """The converter's own error (it prints ' ## ...' and exits 0 for bad arguments), or None.

    An error can span lines that follow each other (a measurement that aborts names the state, the
    share of inf elements, then that it aborts): the last run of such lines, joined, at most three.
    """
    block: list[str] = []
    last: list[str] = []
    for line in log_text.splitlines():
        if line.lstrip().startswith("## "):
            block.append(line.strip())
            last = block
        else:
            block = []
    return " / ".join(last[-3:]) if last else None


class Exl2Cache:
    """The cached measurement and EXL2 models of one checkpoint for one ExLlamaV2 release."""

    def __init__(self, model: dict[str, Any], derived: Path, exllamav2_version: str):
        self.source = Path(model["path"])
        key = cache_key(model.get("fingerprint") or str(self.source), exllamav2_version)
        self.folder = derived / "exl2" / f"{folder_name(model.get('name') or self.source.name)}-{key}"
        self.built: list[dict[str, Any]] = []

    def measurement_path(self, s: dict[str, Any]) -> Path:
        return self.folder / f"measurement-l{s['measurement_length']}.json"

    def model_path(self, s: dict[str, Any]) -> Path:
        return self.folder / (f"{bits_name(s['bits'])}bpw-h{s['head_bits']}-m{s['measurement_length']}-q{s['length']}")

    def get(self, s: dict[str, Any]) -> Path:
        """The EXL2 model for these settings, measuring and quantising what the cache lacks."""
        final = self.model_path(s)
        build_once(final, lambda scratch: self._quantise(s, scratch), marker=MARKER)
        return final

    def _measure(self, s: dict[str, Any], scratch: Path) -> None:
        work = self.folder / f"work-{self.measurement_path(s).stem}"
        work.mkdir(parents=True, exist_ok=True)
        log = self.folder / f"{self.measurement_path(s).stem}.log"
        seconds = run_logged(
            "EXL2 measurement", measurement_command(self.source, work, scratch, s), log, append=True
        )  # appended: a pass resumes
        if not scratch.exists():
            raise RuntimeError(f"EXL2 measurement wrote no file: {converter_error(log.read_text()) or log}")
        shutil.rmtree(work, ignore_errors=True)
        self.built.append({"step": "measurement", "seconds": round(seconds, 2), "file": str(scratch.name)})

    def _quantise(self, s: dict[str, Any], scratch: Path) -> None:
        measurement = self.measurement_path(s)
        build_once(measurement, lambda file: self._measure(s, file))
        final = self.model_path(s)
        work = self.folder / f"work-{final.name}"
        work.mkdir(parents=True, exist_ok=True)
        log = self.folder / f"{final.name}.log"
        # the converter writes the compiled model (weights, then config and tokenizer) into -cf
        seconds = run_logged(
            "EXL2 quantisation", quantise_command(self.source, work, measurement, scratch, s), log, append=True
        )
        if not (scratch / MARKER).exists():
            raise RuntimeError(f"EXL2 quantisation wrote no model: {converter_error(log.read_text()) or log}")
        shutil.rmtree(work, ignore_errors=True)
        size = sum(p.stat().st_size for p in scratch.glob("*.safetensors"))
        self.built.append({"step": f"quantise {bits_name(s['bits'])} bpw", "seconds": round(seconds, 2), "bytes": size})


def exl2_for(model: dict[str, Any], settings: dict[str, Any], derived: Path, version: str) -> tuple[Path, dict]:
    """The cell's EXL2 model and a record of where it came from (what was built now, what was cached)."""
    cache = Exl2Cache(model, derived, version)
    measured_before = cache.measurement_path(settings).exists()
    path = cache.get(settings)
    return path, {
        "exl2": str(path),
        "exl2_bytes": sum(p.stat().st_size for p in path.glob("*.safetensors")),
        "measurement": "cached" if measured_before else "measured now" if cache.built else "not needed",
        "measurement_file": str(cache.measurement_path(settings)),
        "calibration": CALIBRATION,
        "cache_hit": not cache.built,
        "built": cache.built,
        "exllamav2": version,
    }
