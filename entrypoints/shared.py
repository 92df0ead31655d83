"""What the runner and every cell must agree on, and the helpers both use: written once, here.

* ``RESULT_SCHEMA_VERSION``: the version of a cell's result document. The runner
  writes it into each cell's spec; the harness refuses a spec of another version
  (an image built from an older checkout) and stamps its result with it; the
  runner reads only results of this version.
* ``SAFETY_ENV``: the variables that keep NVLink multicast off (it can take a
  shared host's GPUs out of service). Every executor sets them for every cell,
  and the harness records them in each result.
* ``write_json_atomic()``, ``write_text_atomic()``: a file written under a
  scratch name, then renamed into place, so a reader never sees half of it.
* ``cpu_model()``: the host CPU's model name, which results and reuse record;
* ``installed_version()``: an installed distribution's version, or None;
* ``build_once()``: a file or folder of the model store made once, under a file
  lock, written under a scratch name and renamed into place: synthetic
  checkpoints on the host; the engines' converted and quantised models inside
  the cells.

Standard library only. Inside an engine's environment it is imported as
``shared`` (it sits beside the entrypoints); the runner loads this same file as
``runner.shared``, so there is nothing to keep in step.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_SCHEMA_VERSION = 1
LOG_TAIL_CHARS = 1500  # of a failed step's log, read for its last line

SAFETY_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to path through a scratch file in the same folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write document as indented JSON to path, atomically."""
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string where it has none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (its name on PyPI, e.g. flash-attn), or None without it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_built(final: Path, marker: str | None) -> bool:
    """A folder counts as built once it holds its marker file; a file once it exists."""
    return (final / marker).is_file() if marker else final.is_file()


def build_once(
    final: Path,
    build: Callable[[Path], None],
    marker: str | None = None,
    announce: Callable[[], None] = lambda: None,
) -> bool:
    """Make final unless it is built already; True when this call made it.

    With a marker, final is a folder: build(scratch) fills an empty scratch folder
    and must write the marker last. Without one, final is a file: build(scratch)
    creates the file at scratch. Either way the scratch name is renamed to final
    under a lock beside it, so concurrent runs (or cells) build it once, and a
    crash mid-build leaves only a scratch name, cleared by the next build.
    """
    if is_built(final, marker):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(final, marker):
            return False
        scratch = final.parent / f".building-{final.name}"
        _remove(scratch)
        _remove(final)  # a folder without its marker is an unfinished build from before this helper
        if marker:
            scratch.mkdir()
        announce()
        build(scratch)
        if not is_built(scratch, marker):
            raise RuntimeError(f"building {final.name} wrote no {marker or 'file'} at {scratch}")
        os.replace(scratch, final)
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_logged(
    step: str,
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    append: bool = False,
    cwd: Path | None = None,
) -> float:
    """Run one conversion step with its output in a log (after the command line); its seconds, or a
    RuntimeError naming the step, its exit code, the log's last line and the log. ``append`` keeps an
    earlier attempt's output (a step that resumes); ``cwd`` is where a tool that writes into its working
    directory leaves those files."""
    # said in the cell's own log too, so a run stopped mid-step shows which step and where its output is
    print(f"{step}: started (its output: {log_path})", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a" if append else "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = log_path.read_text()[-LOG_TAIL_CHARS:].strip().splitlines()
        raise RuntimeError(f"{step} failed (exit {done.returncode}): {tail[-1] if tail else ''} (log: {log_path})")
    print(f"{step}: done in {seconds:.1f} s", flush=True)
    return seconds


def folder_name(name: str) -> str:
    """A model's name as one folder name in the store (anything but letters, digits, ``._-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
