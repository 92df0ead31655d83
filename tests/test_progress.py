"""The run's progress: cells done, time spent and what is left, as plain lines in a log or a live bar."""

from __future__ import annotations

import io

from runner.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_in_a_log_estimate_from_measured_cells_bounded_by_timeouts(capsys):
    clock, log = Clock(), io.StringIO()
    progress = Progress({"a": 900, "b": 900, "c": 600, "d": 600}, stream=log, clock=clock)
    assert progress.line() == "0/4 cells, 0s elapsed, 4 left (at most 50m00s)"  # nothing measured: the bound only
    progress.finished("a", {"status": "ok"}, kept=True)  # a kept result costs nothing and teaches nothing
    clock.now += 120
    progress.finished("b", {"status": "ok", "wall_s": 120.0})
    assert log.getvalue().splitlines() == [
        "[progress] 1/4 cells, 0s elapsed, 3 left (at most 35m00s)",
        "[progress] 2/4 cells, 2m00s elapsed, about 4m00s left (at most 20m00s)",
    ]
    clock.now += 60
    progress.finished("c", {"status": "failed", "wall_s": 60.0})  # a failed cell took its time too
    assert progress.line() == "3/4 cells, 3m00s elapsed, about 1m30s left (at most 10m00s)"
    progress.finished("d", {"status": "ok", "wall_s": 30.0})
    assert progress.line() == "4/4 cells, 3m00s elapsed"
    progress.log("[x] ok")
    assert capsys.readouterr().out == "[x] ok\n"  # log lines go where they always went
    progress.close()


def test_cells_running_at_once_shorten_the_estimate():
    progress = Progress({"a": 600, "b": 600, "c": 600}, parallel=2, stream=io.StringIO(), clock=Clock())
    progress.finished("a", {"wall_s": 100.0})
    assert progress.line().endswith("about 1m40s left (at most 10m00s)")  # 2 left x 100 s / 2 at once


def test_a_terminal_gets_a_live_bar_instead_of_lines():
    screen = Terminal()
    progress = Progress({"a": 60, "b": 60}, stream=screen, clock=Clock())
    progress.finished("a", {"wall_s": 5.0})
    progress.close()
    drawn = screen.getvalue()
    assert "[progress]" not in drawn and "\r" in drawn  # redrawn in place
    assert "1/2" in drawn and "about 5s left" in drawn


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (4, 65, 3600, 5400 + 59)] == ["4s", "1m05s", "1h00m", "1h30m"]
