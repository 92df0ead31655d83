"""A checkpoint folder's identity without reading its bytes: what derived files are keyed by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# 2000-01-01 UTC: what settle() gives every file of a checkpoint a recipe fixes
SETTLED_MTIME_NS = 946_684_800 * 10**9


def fingerprint(folder: Path) -> str:
    """Every file's name, size and modification time, hashed (dot-files, such as locks, left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def settle(folder: Path) -> None:
    """Give every file one fixed modification time: for checkpoints whose bytes a recipe fixes.

    A synthetic checkpoint materialised on another machine then has the same
    fingerprint, so what is derived from it (an EXL2 measurement, a GGUF, a
    compiled model) keeps its key there and can be carried over; a file edited
    in place still changes the fingerprint.
    """
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(SETTLED_MTIME_NS, SETTLED_MTIME_NS))
