"""runner/cpu_load.py on this machine's real /proc/stat, and on a file that stands still or is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from runner.cpu_load import busy_share


def test_a_busy_core_shows_in_the_share():
    idle = busy_share(window_s=0.3)
    assert idle is not None and 0.0 <= idle <= 1.0
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = busy_share(window_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    cores = os.cpu_count() or 1
    assert loaded is not None and loaded >= 0.8 / cores - 0.05  # one spinning process: about one core's share


def test_an_unreadable_or_still_stat_gives_no_figure(tmp_path):
    assert busy_share(window_s=0.01, stat=tmp_path / "absent") is None
    still = tmp_path / "stat"
    still.write_text("cpu  100 0 50 1000 5 0 0 0 0 0\ncpu0 100 0 50 1000 5 0 0 0 0 0\n")
    assert busy_share(window_s=0.01, stat=still) is None  # no time passed in it: nothing to divide
