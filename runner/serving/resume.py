"""What a serving cell keeps from its earlier result: all of an ok one, or the ok levels of one cut short.

An offline cell keeps an earlier ok result when everything it was measured with is
unchanged (runner.reuse). A serving cell is a sweep, and a sweep can stop part way
(Ctrl-C, a lent machine's time running out, a level that failed, the server dying):
its result keeps the levels it measured. Run again with everything unchanged, the
cell keeps those levels and sweeps only the ones it lacks, on a new server; each
level says when it was measured (``started``), and a kept level the run it came
from (``kept_from``). ``--force`` measures every level again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.reuse import why_not_reuse


@dataclass(frozen=True)
class Plan:
    """keep: the earlier result stands whole; otherwise sweep the levels not in kept (why: the log's reason)."""

    keep: bool
    kept: list[dict[str, Any]] = field(default_factory=list)
    why: str = ""


def plan(previous: dict[str, Any] | None, wanted: dict[str, Any], levels: list[int], force: bool) -> Plan:
    """How much of previous (the cell's stored result) a run measured with wanted may keep."""
    if previous is None:
        return Plan(keep=False, why="no earlier result")
    if force:
        return Plan(keep=False, why="--force")
    why = why_not_reuse(previous, wanted)
    if why is None:
        return Plan(keep=True)
    if previous.get("status") == "ok":
        return Plan(keep=False, why=why)  # something it was measured with changed: every level again
    changed = why_not_reuse({**previous, "status": "ok"}, wanted)
    if changed is not None:
        return Plan(keep=False, why=f"{why}, and {changed}")
    since = previous.get("started_at") or previous.get("finished_at")  # a child that wrote nothing: the runner's
    kept = [
        {**level, "kept_from": level.get("kept_from") or since}
        for level in previous.get("levels", [])
        if level.get("status") == "ok" and level.get("level") in levels
    ]
    return Plan(keep=False, kept=kept, why=why)
