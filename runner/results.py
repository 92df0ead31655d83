"""Result documents: one schema-versioned JSON per cell, written atomically, never overwritten by worse news.

A result has a status (ok, unsupported, failed, timeout, oom, skipped) and a
reason; unsupported means the setting cannot run in this environment (an engine
or package missing, no CUDA GPU), which is not a failure. The
child's JSON is trusted only together with its exit code: a non-zero exit is
never an ok result, and a child that wrote nothing or garbage is its own kind
of failure with the log's tail kept. outcome() turns a finished, timed-out or
interrupted cell into its result the same way for every executor.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from runner.job import Job
from runner.shared import RESULT_SCHEMA_VERSION

STATUSES = ("ok", "unsupported", "failed", "timeout", "oom", "skipped")
# what a row with each status says before its reason ("unsupported": the setting cannot run here, not a failure)
STATUS_WORDS = {"unsupported": "not run here"}
FAILURES = ("failed", "timeout", "oom")  # what --strict counts
TAIL_CHARS = 4000


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_result(path: Path) -> dict[str, Any] | None:
    """The result at path, or None if absent, unreadable or of another schema version."""
    document = _read_json(path)
    if not isinstance(document, dict) or document.get("schema_version") != RESULT_SCHEMA_VERSION:
        return None
    return document


def schema_problem(path: Path) -> str | None:
    """Why a result file the runner cannot read was written by another harness, or None."""
    document = _read_json(path)
    if not isinstance(document, dict) or "schema_version" not in document:
        return None
    found = document["schema_version"]
    if found == RESULT_SCHEMA_VERSION:
        return None
    return (
        f"the cell's harness wrote result schema {found!r}, this runner reads {RESULT_SCHEMA_VERSION}: "
        "its image or entrypoints come from another checkout; rebuild the image (make image-ENGINE)"
    )


def failure(
    cell: dict[str, Any], model: dict[str, Any], workload: dict[str, Any], status: str, reason: str
) -> dict[str, Any]:
    assert status in STATUSES
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": cell,
        "model": model,
        "workload": workload,
        "status": status,
        "reason": reason,
        "metrics": {},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    return text[-limit:]


def reconcile(child: dict[str, Any] | None, exit_code: int, log_tail: str, fallback: dict[str, Any]) -> dict[str, Any]:
    """Combine the child's own report with its exit code; the exit code wins."""
    if child is None:
        reason = f"exit code {exit_code}, no result written" if exit_code else "exited 0 but wrote no result"
        result = {**fallback, "status": "failed", "reason": _with_last_line(reason, log_tail)}
    elif exit_code != 0 and child.get("status") == "ok":
        result = {**child, "status": "failed", "reason": f"reported ok but exited with code {exit_code}"}
    elif exit_code == 0 and child.get("status") != "ok":
        result = {**child, "status": child.get("status", "failed")}
    else:
        result = child
    result["exit_code"] = exit_code
    if result["status"] != "ok":
        result["log_tail"] = log_tail
    return result


def _with_last_line(reason: str, log_tail: str) -> str:
    lines = [line for line in log_tail.strip().splitlines() if line.strip()]
    return f"{reason}: {lines[-1].strip()[:300]}" if lines else reason


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of host memory?)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def not_started(job: Job) -> dict[str, Any]:
    """The result of a cell that an interrupt kept from starting."""
    spec = job.spec
    reason = "interrupted: the run was stopped before this cell started"
    return {**failure(spec["cell"], spec["model"], spec["workload"], "failed", reason), "exit_code": None}


def outcome(job: Job, code: int, timed_out: bool, interrupted: bool) -> dict[str, Any]:
    """The cell's result from its exit code, its own report and its log (shared by every executor).

    A cell that finished ok before an interrupt reached it keeps its measurement.
    """
    log_tail = tail(job.log_path.read_text(errors="replace"))
    fallback = failure(job.cell, job.spec["model"], job.spec["workload"], "failed", "")
    if timed_out:
        reason = f"timeout: no result after {job.timeout_s} s; the cell was killed"
        return {**fallback, "status": "timeout", "reason": reason, "exit_code": code, "log_tail": log_tail}
    child = read_result(job.child_result_path)
    if child is None and (problem := schema_problem(job.child_result_path)):
        return {**fallback, "reason": problem, "exit_code": code, "log_tail": log_tail}
    result = reconcile(child, code, log_tail, fallback)
    if interrupted and result["status"] != "ok":
        reason = "interrupted: the run was stopped while this cell ran; the cell was killed"
        return {**fallback, "reason": reason, "exit_code": code, "log_tail": log_tail}
    if result["status"] != "ok" and code and "exit code" in (result.get("reason") or ""):
        result["reason"] = result["reason"].replace(f"exit code {code}", describe_exit(code), 1)
    return result
