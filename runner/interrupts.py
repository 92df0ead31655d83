"""Where a stop (Ctrl-C, SIGTERM) may land in the runner's main thread: not between starting a child process and
recording it.

The runner turns its first SIGINT / SIGTERM into a KeyboardInterrupt in the main thread (runner.cli), wherever that
thread is. A serving sweep starts its load generator from the main thread, and a KeyboardInterrupt raised inside
``subprocess.Popen``, after the child was forked but before Popen returned, left that child running with nothing
to stop it: its process group was never recorded (seen in CI: an AIPerf process outlived an interrupted sweep).
Code that starts a child and records it runs under ``held()``; a stop that arrives meanwhile is raised as the
block ends, once the child is recorded and whatever stops it is in place.

    with interrupts.held():
        process = subprocess.Popen(...)
        running.add(process)
"""

from __future__ import annotations

import threading

_held = 0  # nesting depth of held() in the main thread
_pending = False  # a stop arrived while held


def stop() -> None:
    """What the runner's signal handler does: raise KeyboardInterrupt now, or as the held block ends."""
    global _pending
    if _held:
        _pending = True
        return
    raise KeyboardInterrupt


class held:
    """A block of the main thread that a stop does not interrupt; it is raised as the outermost block ends. In
    other threads (which signals never interrupt) it does nothing."""

    def __enter__(self) -> held:
        global _held
        self.counted = threading.current_thread() is threading.main_thread()
        if self.counted:
            _held += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _held, _pending
        if not self.counted:
            return
        _held -= 1
        if not _held and _pending:
            _pending = False
            raise KeyboardInterrupt
