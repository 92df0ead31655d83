"""How busy the host's CPU is just before a CPU cell starts: other work on the cores skews a CPU row.

Read from /proc/stat over a short window (the share of CPU time not idle, across all
cores). The cell still runs; its result records the figure and the table's Notes say
when the host was busy, so an odd CPU row can be told apart from a slow setting.
"""

from __future__ import annotations

import time
from pathlib import Path

BUSY_SHARE = 0.25  # more than a quarter of the host's CPU time in use by others counts as busy
WINDOW_S = 0.5


def _times(stat: Path) -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs, or None where /proc/stat cannot be read."""
    try:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already counted in user


def busy_share(window_s: float = WINDOW_S, stat: Path = Path("/proc/stat")) -> float | None:
    """The share (0-1) of all CPU time spent not idle over window_s, or None where it cannot be read."""
    before = _times(stat)
    time.sleep(window_s)
    after = _times(stat)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 1 - (after[0] - before[0]) / (after[1] - before[1])
