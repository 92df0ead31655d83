"""MLC model builds for MLC cells: mlc_llm's convert_weight, gen_config and compile, each kept in the model store.

mlc_llm makes a runnable model in three steps, each run here as its command line
(``python -m mlc_llm <step>``) with its output in a log beside what it made:

- convert_weight: the checkpoint's weights in the cell's quantisation
  (``<quant>/params/``: tensor-cache.json and the shards), once per quantisation;
- gen_config: the chat config (context window, prefill chunk, batch 1) and the
  tokenizer files (``<quant>/config-c<context>-p<chunk>/``);
- compile: the model library for one device (``lib-<device>-<opt>.so`` beside its
  config), where ``<device>`` names the target (``llvm``, or ``cuda-sm_90``) and
  ``<opt>`` hashes the compile options.

mlc_llm reads the checkpoint through a view of it (its weight files linked, the rest
copied): its convert_weight writes a ``model.safetensors.index.json`` beside the config of
a checkpoint that has a single weights file, and the user's checkpoint must not change
(its fingerprint keys every derived file).

All of it lives in ``<derived>/mlc/<model>-<key>/``, where the key hashes the
checkpoint's fingerprint, the mlc_llm source and the TVM release, so another
release rebuilds. shared.build_once renames each finished step into place under a
lock; what is reused is recorded (``cache_hit``, ``built``).

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, run_logged

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}  # linked into the view; the small files are copied
PARAMS_MARKER = "tensor-cache.json"  # convert_weight writes it after the shards
CONFIG_MARKER = "mlc-chat-config.json"


def cache_key(fingerprint: str, mlc_version: str, tvm_version: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for part in (mlc_version, tvm_version):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def device_name(target: str) -> str:
    """A folder-safe name for a compile target: 'llvm', or 'cuda-sm_90' for {"kind": "cuda", "arch": "sm_90"}."""
    if target.startswith("{"):
        parsed = json.loads(target)
        return "-".join(str(parsed[k]) for k in ("kind", "arch") if k in parsed)
    return folder_name(target)


def opt_name(opt: str) -> str:
    return hashlib.sha256(opt.encode()).hexdigest()[:8]


def convert_command(source: Path, quantization: str, device: str, output: Path) -> list[str]:
    return [sys.executable, "-m", "mlc_llm", "convert_weight", str(source),
            "--quantization", quantization, "--device", device, "-o", str(output)]  # fmt: skip


def config_command(source: Path, quantization: str, context: int, chunk: int, output: Path) -> list[str]:
    return [sys.executable, "-m", "mlc_llm", "gen_config", str(source), "--quantization", quantization,
            "--conv-template", "LM", "--context-window-size", str(context), "--prefill-chunk-size", str(chunk),
            "--max-batch-size", "1", "-o", str(output)]  # fmt: skip


def compile_command(config: Path, target: str, opt: str, output: Path) -> list[str]:
    return [sys.executable, "-m", "mlc_llm", "compile", str(config / CONFIG_MARKER),
            "--device", target, "--opt", opt, "-o", str(output)]  # fmt: skip


class MlcBuild:
    """The built weights, config and library of one checkpoint for one mlc_llm and TVM release."""

    def __init__(self, model: dict[str, Any], derived: Path, versions: tuple[str, str], env: dict[str, str]):
        self.source = Path(model["path"])
        key = cache_key(model.get("fingerprint") or str(self.source), *versions)
        self.folder = derived / "mlc" / f"{folder_name(model.get('name') or self.source.name)}-{key}"
        self.env = env
        self.built: list[dict[str, Any]] = []

    def params(self, quantization: str) -> Path:
        return self.folder / quantization / "params"

    def config(self, quantization: str, context: int, chunk: int) -> Path:
        return self.folder / quantization / f"config-c{context}-p{chunk}"

    def library(self, config: Path, target: str, opt: str) -> Path:
        return config / f"lib-{device_name(target)}-{opt_name(opt)}.so"

    def _view(self, out: Path) -> Path:
        """The checkpoint as mlc_llm may see it: its weight files linked, the other files copied (see above)."""
        view = out.parent / f".{out.name}-checkpoint"
        shutil.rmtree(view, ignore_errors=True)
        view.mkdir()
        for path in self.source.iterdir():
            if path.suffix in WEIGHT_SUFFIXES:
                (view / path.name).symlink_to(path.resolve())
            elif path.is_file():
                shutil.copy2(path, view / path.name)
        return view

    def _step(self, name: str, command: list[str], log: Path) -> None:
        seconds = run_logged(f"mlc_llm {name}", command, log, env=self.env)
        self.built.append({"step": name, "seconds": round(seconds, 1)})

    def _step_on_view(self, name: str, command: Callable[[Path], list[str]], out: Path, log: Path) -> None:
        """A step that reads the checkpoint (convert_weight, gen_config), given it as a view (see above)."""
        view = self._view(out)
        try:
            self._step(name, command(view), log)
        finally:
            shutil.rmtree(view, ignore_errors=True)

    def convert(self, quantization: str, devices: tuple[str, ...]) -> Path:
        """The weights in a quantisation (built once): converted on the first of devices that succeeds.

        mlc_llm quantises on the device it is given: on a GPU in seconds, on the CPU with unscheduled
        loops (q4f16_1 of a 7B model: 8 min on an H200 host's CPU). A cell on a GPU tries its GPU first
        and falls back to the CPU, the path the CPU tests run; a failed try stays in ``built`` with its
        reason and its log (convert-<device>.log) beside the weights.
        """
        params = self.params(quantization)

        def convert(out: Path) -> None:
            for device in devices:
                log, started = out.parent / f"convert-{device}.log", time.perf_counter()
                try:
                    self._step_on_view(
                        "convert_weight", lambda view, on=device: convert_command(view, quantization, on, out), out,
                        log,
                    )  # fmt: skip
                except RuntimeError as exc:
                    if device == devices[-1]:
                        raise
                    seconds = round(time.perf_counter() - started, 1)
                    self.built.append(
                        {"step": "convert_weight", "device": device, "seconds": seconds, "failed": str(exc)}
                    )
                    shutil.rmtree(out)
                    out.mkdir()
                    continue
                self.built[-1]["device"] = device
                return

        build_once(params, convert, marker=PARAMS_MARKER)
        return params

    def get(
        self, quantization: str, context: int, chunk: int, target: str, opt: str, convert_on: tuple[str, ...]
    ) -> dict:
        """Everything a cell loads, building what the store lacks: {params, config, library}."""
        config = self.config(quantization, context, chunk)
        library = self.library(config, target, opt)

        def configure(out: Path) -> None:
            self._step_on_view(
                "gen_config", lambda view: config_command(view, quantization, context, chunk, out), out,
                out.parent / "config.log",
            )  # fmt: skip

        def compile_library(out: Path) -> None:
            self._step("compile", compile_command(config, target, opt, out), library.with_suffix(".log"))

        params = self.convert(quantization, convert_on)
        build_once(config, configure, marker=CONFIG_MARKER)
        build_once(library, compile_library)
        return {"params": params, "config": config, "library": library}


def overlay_environment(overlay: Path, source: str | None) -> dict[str, str]:
    """The environment under which ``python -m mlc_llm`` runs mlc-llm's source over this folder's overlay."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(overlay), env.get("PYTHONPATH", "")) if p)
    if source:
        env["MLC_LLM_SOURCE"] = source
    return env
