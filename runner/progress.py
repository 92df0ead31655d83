"""Progress of a long run: cells done, time spent, and an estimate of what is left, after every cell.

The estimate is the mean wall time of the cells measured so far (kept results
cost nothing and do not count) times the cells left, divided by how many run at
once; the bound beside it is the cells' own timeouts, what the run can take at
most. On a terminal this is a live bar (tqdm) under the runner's log lines; in
a log (CI, a file, a pipe) it is one plain line per finished cell, so the log
stays readable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    def __init__(self, timeouts: dict[str, float], parallel: int = 1, stream: TextIO | None = None, clock=time.time):
        self.timeouts = dict(timeouts)  # cell id -> its timeout_s, for the cells this run may measure
        self.parallel = max(1, parallel)
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.walls: list[float] = []
        self.done: set[str] = set()
        self.lock = threading.Lock()
        live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=len(self.timeouts), unit="cell", file=self.stream, disable=not live, dynamic_ncols=True)

    def log(self, message: str) -> None:
        """A log line, above the live bar when there is one; whole, when cells log from several threads at once."""
        with self.lock:
            if self.bar.disable:
                print(message, flush=True)
            else:
                self.bar.write(message, file=sys.stdout)

    def finished(self, cell_id: str, result: dict[str, Any] | None, kept: bool = False) -> str:
        """Count a cell as done; return (and show) the progress line."""
        with self.lock:
            self.done.add(cell_id)
            if not kept and result is not None and result.get("wall_s") is not None:
                self.walls.append(float(result["wall_s"]))
            line = self.line()
            if self.bar.disable:
                print(f"[progress] {line}", file=self.stream, flush=True)
            else:
                self.bar.set_postfix_str(line.split(", ", 1)[-1], refresh=False)
                self.bar.update(1)
            return line

    def line(self) -> str:
        left = [cell for cell in self.timeouts if cell not in self.done]
        elapsed = duration(self.clock() - self.started)
        text = f"{len(self.done)}/{len(self.timeouts)} cells, {elapsed} elapsed"
        if not left:
            return text
        bound = duration(sum(self.timeouts[c] for c in left) / self.parallel)
        if not self.walls:
            return f"{text}, {len(left)} left (at most {bound})"
        estimate = duration(sum(self.walls) / len(self.walls) * len(left) / self.parallel)
        return f"{text}, about {estimate} left (at most {bound})"

    def close(self) -> None:
        self.bar.close()
