"""GGUF files for llama.cpp cells, made by llama.cpp's own tools and cached in the model store.

``f16`` and ``bf16`` come from ``convert_hf_to_gguf.py``; every other type is
quantised from the f16 file by ``llama-quantize``. Both are the copies laid out
beside the cell's llama.cpp build by images/llamacpp/build-llama-cpp.sh, found
through ``LLAMA_CPP_HOME``, so converter, quantiser and inference are one
llama.cpp. Files live in ``<derived>/gguf/<model>-<key>/<type>.gguf``, where
the key hashes the checkpoint's fingerprint (file names, sizes and times, from
the runner) and the build's BUILD_INFO: a second run converts nothing, a changed
checkpoint or llama.cpp converts again. shared.build_once writes each file under
a scratch name and renames it into place, under a file lock, so concurrent cells
build it once.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, run_logged

CONVERTER_TYPES = ("f16", "bf16")


class ToolchainMissing(RuntimeError):
    """No llama.cpp build laid out for conversion; the message says how to get one."""


class Toolchain:
    """A llama.cpp build laid out by build-llama-cpp.sh: bin/, the converter and BUILD_INFO."""

    def __init__(self, home: Path):
        self.home = home
        self.converter = home / "convert_hf_to_gguf.py"
        self.quantizer = home / "bin" / "llama-quantize"
        self.bench = home / "bin" / "llama-bench"
        missing = [p for p in (self.converter, self.quantizer, home / "BUILD_INFO") if not p.exists()]
        if missing:
            raise ToolchainMissing(
                f"LLAMA_CPP_HOME={home} lacks {', '.join(str(p) for p in missing)}; "
                "lay it out with images/llamacpp/build-llama-cpp.sh"
            )
        self.build_info = dict(
            line.split("=", 1) for line in (home / "BUILD_INFO").read_text().splitlines() if "=" in line
        )

    @classmethod
    def from_environment(cls) -> Toolchain:
        home = toolchain_home()
        if home is None:
            raise ToolchainMissing(
                f"no llama.cpp build: LLAMA_CPP_HOME is not set and {Path(sys.prefix) / 'llama.cpp'} does not exist; "
                "GGUF conversion needs llama.cpp's converter and llama-quantize from the binding's build "
                "(`make setup-llamacpp`, or images/llamacpp/build-llama-cpp.sh)"
            )
        return cls(home)


def toolchain_home() -> Path | None:
    """LLAMA_CPP_HOME, else <this Python's prefix>/llama.cpp (where the image and `make setup-llamacpp` put it)."""
    if os.environ.get("LLAMA_CPP_HOME"):
        return Path(os.environ["LLAMA_CPP_HOME"])
    beside = Path(sys.prefix) / "llama.cpp"
    return beside if beside.is_dir() else None


def point_binding_at_build() -> None:
    """Make llama-cpp-python load the toolchain's libllama, unless the environment already chose one."""
    home = toolchain_home()
    if home is not None and (home / "bin").is_dir():
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(home / "bin"))


def cache_key(fingerprint: str, toolchain: Toolchain) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(repr(sorted(toolchain.build_info.items())).encode())
    return digest.hexdigest()[:16]


class GgufCache:
    """The cached GGUF files of one checkpoint for one llama.cpp build."""

    def __init__(self, model: dict[str, Any], derived: Path, toolchain: Toolchain):
        self.model_path = Path(model["path"])
        self.toolchain = toolchain
        key = cache_key(model.get("fingerprint") or str(self.model_path), toolchain)
        self.folder = derived / "gguf" / f"{folder_name(model.get('name') or self.model_path.name)}-{key}"
        self.built: list[dict[str, Any]] = []

    def path(self, quant: str) -> Path:
        return self.folder / f"{quant}.gguf"

    def get(self, quant: str) -> Path:
        """The GGUF of this type, built (with the f16 it comes from) if the cache lacks it."""
        final = self.path(quant)
        build_once(final, lambda scratch: self._build(quant, scratch))
        return final

    def _build(self, quant: str, scratch: Path) -> None:
        log = self.folder / f"{quant}.log"
        if quant in CONVERTER_TYPES:
            env = dict(os.environ)
            paths = [str(self.toolchain.home / "gguf-py"), env.get("PYTHONPATH")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
            command = [
                sys.executable,
                str(self.toolchain.converter),
                str(self.model_path),
                "--outtype",
                quant,
                "--outfile",
                str(scratch),
            ]
            step = "convert_hf_to_gguf.py"
            seconds = run_logged(step, command, log, env)
        else:
            source = self.get("f16")
            threads = str(os.cpu_count() or 1)
            command = [str(self.toolchain.quantizer), str(source), str(scratch), quant.upper(), threads]
            step = "llama-quantize"
            seconds = run_logged(step, command, log)
        self.built.append({"type": quant, "by": step, "seconds": round(seconds, 2), "bytes": scratch.stat().st_size})


def gguf_for(model: dict[str, Any], quant: str, derived: Path) -> tuple[Path, dict[str, Any]]:
    """The cell's GGUF and a record of where it came from (what was built now, what was cached)."""
    toolchain = Toolchain.from_environment()
    cache = GgufCache(model, derived, toolchain)
    path = cache.get(quant)
    return path, {
        "gguf": str(path),
        "gguf_bytes": path.stat().st_size,
        "gguf_type": quant,
        "cache_hit": not cache.built,
        "built": cache.built,
        "llama_cpp_build": toolchain.build_info,
    }
