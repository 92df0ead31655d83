"""Which runner made a result: the tool's version and the git commit of its checkout (marked when edited)."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from runner import __version__

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def tool_version() -> dict[str, str | None]:
    """{"version": ..., "commit": short hash, with "+edits" when the checkout differs from it; None outside git}."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+edits"
    return {"version": __version__, "commit": commit}


def describe(tool: dict[str, str | None] | None) -> str:
    if not tool:
        return "an older runner (no version recorded)"
    commit = f" (commit {tool['commit']})" if tool.get("commit") else ""
    return f"inference-matrix {tool.get('version')}{commit}"
