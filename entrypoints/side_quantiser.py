"""A user's checkpoint quantised once by a tool in a Python of its own, and cached in the model store.

Some engines read a quantised format that another tool makes, and that tool pins
packages the engine's environment cannot have (another release of a library
the engine also imports). The tool then lives in a venv of its own (an image's
/opt/<tool>, layered over the engine's venv for torch and the rest), named by
an environment variable, and its script runs there as a separate process, before the cell's
memory sampling starts. The result lives in ``<derived>/<folder>/<model>-<key>/``,
where the key hashes the checkpoint's fingerprint, the tool's release, the
recipe, the script and its calibration text: a second cell (or run) quantises
nothing. shared.build_once writes it under a scratch name and renames it into
place under a file lock, so concurrent cells build it once. The script writes
``quantised_by.json`` (what ran, how, how long) into its output last.

Each engine describes its tool with a SideQuantiser in its own files; this
module names none. It runs inside the engine's environment and imports nothing
from the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, run_logged

HERE = Path(__file__).resolve().parent
CALIBRATION = HERE / "calibration.txt"  # 140 KB of CPython 3.11's language reference (PSF License)
RECORD = "quantised_by.json"


class QuantiserMissing(RuntimeError):
    """No Python with the tool to quantise with; the message says how to get one."""


def checkpoint_quantisation(model_path: Path) -> str | None:
    """The quant_method a checkpoint's config.json declares, or None (an unquantised checkpoint)."""
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("quantization_config") or {}).get("quant_method")


GROUP_SIZES = (128, 64, 32)  # what 4-bit kernels take; a quantiser uses the largest dividing every layer


def group_size_for(in_features: set[int], method: str) -> int:
    """The largest of GROUP_SIZES dividing every quantised layer's input size (a quantise script's recipe)."""
    for size in GROUP_SIZES:
        if all(n % size == 0 for n in in_features):
            return size
    raise SystemExit(f"no {method} group size in {GROUP_SIZES} divides the layer input sizes {sorted(in_features)}")


def calibration_windows(ids: list[int], samples: int, tokens: int) -> list[list[int]]:
    """Up to `samples` windows of `tokens` ids each, taken in order from the text's ids (at least one)."""
    windows = [ids[i : i + tokens] for i in range(0, max(len(ids) - tokens, 0) + 1, tokens)]
    return [w for w in windows if w][:samples]


@dataclass(frozen=True)
class SideQuantiser:
    """One tool: what it is called, where its Python is found, its script and what that script is given."""

    tool: str  # as messages name it
    package: str  # the distribution whose release is recorded and keyed
    pin: str  # the release the images install, for messages
    env: str  # the variable naming its Python
    script: Path  # run as: python SCRIPT --model DIR --output DIR [args...]
    folder: str  # its folder in the store's derived folder
    produces: str  # the format made, for messages and the log line
    wanted_by: str  # the setting that asked for it
    image: str  # where it comes ready: the image and its venv
    export: str  # what a user can point at instead
    args: tuple[str, ...] = ()
    recipe: str = ""  # what else decides the output (sample counts, ...): part of the key

    def python(self) -> str:
        python = os.environ.get(self.env)
        if not python:
            raise QuantiserMissing(
                f"{self.wanted_by} on an unquantised checkpoint needs {self.tool}, and {self.env} is not set: "
                f"use {self.image}, set {self.env} to a Python with {self.package}=={self.pin}, "
                f"or point model.path at {self.export}"
            )
        if not shutil.which(python):
            raise QuantiserMissing(f"{self.env}={python} is not an executable Python")
        return python

    def version(self, python: str) -> str:
        done = subprocess.run(
            [python, "-c", f"import importlib.metadata as m; print(m.version({self.package!r}))"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            raise QuantiserMissing(f"{self.env}={python} has no {self.tool} ({last})")
        return done.stdout.strip()

    def cache_key(self, fingerprint: str, version: str) -> str:
        digest = hashlib.sha256(fingerprint.encode())
        digest.update(f"{self.package}=={version};{self.recipe}".encode())
        digest.update(self.script.read_bytes())
        for arg in self.args:  # files given to the script (calibration text) count by their bytes
            path = Path(arg)
            if path.is_absolute() and path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def command(self, python: str, source: Path, output: Path) -> list[str]:
        return [python, str(self.script), "--model", str(source), "--output", str(output), *self.args]

    def checkpoint(self, model: dict[str, Any], derived: Path) -> tuple[Path, dict[str, Any]]:
        """The model quantised by this tool, made now unless the store has it, and a record of where it came from."""
        python = self.python()
        version = self.version(python)
        source = Path(model["path"])
        key = self.cache_key(model.get("fingerprint") or str(source), version)
        final = derived / self.folder / f"{folder_name(model.get('name') or source.name)}-{key}"
        timing: dict[str, float] = {}

        def quantise(scratch: Path) -> None:
            print(f"quantising {source} to {self.produces} with {self.tool} {version} into {final}", flush=True)
            t0 = time.perf_counter()
            log = final.parent / f"{final.name}.log"
            # in the log's folder: what a tool writes to its working directory stays beside its log
            run_logged(f"{self.tool} {self.produces}", self.command(python, source, scratch), log, cwd=log.parent)
            timing["seconds"] = round(time.perf_counter() - t0, 1)

        built_now = build_once(final, quantise, marker=RECORD)
        return final, {
            "checkpoint": str(final),
            "cache_hit": not built_now,
            "seconds": timing.get("seconds"),
            "quantised_by": json.loads((final / RECORD).read_text()),
        }
