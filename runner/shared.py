"""The runner's handle on entrypoints/shared.py, the one file the host and the cells both run.

That file (standard library only) holds what both sides must agree on: the result
schema version, the multi-GPU safety variables, the atomic JSON write and the
build-once helper of the model store. It sits beside the entrypoints so that
every image copies it; the runner loads the same file from there, so the two
sides cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

FILE = Path(__file__).resolve().parents[1] / "entrypoints" / "shared.py"


def _load():
    spec = importlib.util.spec_from_file_location("runner._entrypoints_shared", FILE)
    assert spec and spec.loader, FILE
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_shared = _load()

RESULT_SCHEMA_VERSION: int = _shared.RESULT_SCHEMA_VERSION
SAFETY_ENV: dict[str, str] = _shared.SAFETY_ENV
write_json_atomic = _shared.write_json_atomic
write_text_atomic = _shared.write_text_atomic
build_once = _shared.build_once
cpu_model = _shared.cpu_model
is_built = _shared.is_built

__all__ = [
    "RESULT_SCHEMA_VERSION",
    "SAFETY_ENV",
    "build_once",
    "cpu_model",
    "is_built",
    "write_json_atomic",
    "write_text_atomic",
]
