"""One runner per run folder: a lock held for the whole run, and a note of who holds it.

Two runners on one folder would overwrite each other's results and stop each
other's cells. The second one refuses at once, naming the first. The lock is
filelock's (flock on Linux), which the kernel drops with its holder's process:
a runner that crashed or was killed leaves nothing that blocks the next one.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from runner.errors import UserError
from runner.shared import write_json_atomic

LOCK_FILE = ".runner.lock"
HOLDER_FILE = ".runner.holder.json"  # apart from the lock file, which filelock truncates when it opens it


def _holder(folder: Path) -> str:
    try:
        holder = json.loads((folder / HOLDER_FILE).read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['started_at']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold folder for this runner, or raise UserError naming the runner that holds it."""
    lock = FileLock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{folder}: another runner is using this run folder ({_holder(folder)}); "
            "wait for it to finish, or give this run its own folder with -o"
        ) from None
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python -m runner " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        }
        write_json_atomic(folder / HOLDER_FILE, holder)
        yield
    finally:
        (folder / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
