"""CTranslate2 models for CTranslate2 cells, made by its own Transformers converter and cached in the model store.

The converter (``ctranslate2.converters.transformers``, the module behind
``ct2-transformers-converter``) needs torch and transformers, which the cell's
environment has (the ctranslate2 image; the local venv), so it runs in the cell,
as a child process, before memory sampling starts. It stores the weights in the
cell's compute type (``--quantization``), so one conversion serves every cell of
that type, and copies the checkpoint's tokenizer files beside the model. Models
live in ``<derived>/ctranslate2/<model>-<type>-<key>/``, where the key hashes the
checkpoint's fingerprint, CTranslate2's release and this file: a second cell (or
run) converts nothing. shared.build_once makes each under a scratch name and
renames it into place under a file lock, so concurrent cells convert once.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, installed_version, run_logged

MARKER = "converted_by.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")


def cache_key(fingerprint: str, ctranslate2_version: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(f"ctranslate2=={ctranslate2_version}".encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def converter_command(source: Path, output: Path, compute_type: str) -> list[str]:
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    command = [sys.executable, "-m", "ctranslate2.converters.transformers", "--model", str(source)]
    command += ["--output_dir", str(output), "--quantization", compute_type, "--low_cpu_mem_usage", "--force"]
    return command + (["--copy_files", *copied] if copied else [])


def model_for(model: dict[str, Any], compute_type: str, derived: Path) -> tuple[Path, dict[str, Any]]:
    """The cell's CTranslate2 model, converted now unless the store has it, and where it came from."""
    version = installed_version("ctranslate2") or "unknown"
    source = Path(model["path"])
    key = cache_key(model.get("fingerprint") or str(source), version)
    final = derived / "ctranslate2" / f"{folder_name(model.get('name') or source.name)}-{compute_type}-{key}"
    made: dict[str, Any] = {}

    def convert(scratch: Path) -> None:
        print(f"converting {source} to CTranslate2 ({compute_type}) into {final}", flush=True)
        command = converter_command(source, scratch, compute_type)
        seconds = run_logged("CTranslate2's converter", command, final.parent / f"{final.name}.log")
        made.update(
            {
                "by": "ctranslate2.converters.transformers",
                "ctranslate2": version,
                "transformers": installed_version("transformers"),
                "torch": installed_version("torch"),
                "quantization": compute_type,
                "seconds": round(seconds, 1),
                "command": command,
            }
        )
        (scratch / MARKER).write_text(json.dumps(made, indent=2) + "\n")

    built_now = build_once(final, convert, marker=MARKER)
    record = json.loads((final / MARKER).read_text())
    return final, {
        "ctranslate2_model": str(final),
        "model_bytes": (final / "model.bin").stat().st_size,
        "cache_hit": not built_now,
        "seconds": record["seconds"] if built_now else None,
        "converted_by": record,
    }
