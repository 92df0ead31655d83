"""Build a folder of the model store once: under a file lock, in a scratch folder renamed into place.

Concurrent runs (or cells) asking for the same folder build it once; a crash
mid-build leaves only a scratch folder, cleared by the next build. A folder
counts as built when its marker file exists.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path


def build_once(final: Path, marker: str, build: Callable[[Path], None], announce: Callable[[], None]) -> Path:
    """final, after build(scratch) has filled it (announce() first), unless final/marker already exists."""
    if (final / marker).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / marker).exists():
            return final
        scratch = final.parent / f".building-{final.name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        announce()
        build(scratch)
        scratch.rename(final)
    return final
