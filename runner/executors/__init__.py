"""Executors run one prepared cell and return its reconciled result; chosen by name."""

from __future__ import annotations

from runner.executors.local import LocalExecutor

EXECUTORS = {"local": LocalExecutor}

__all__ = ["EXECUTORS", "LocalExecutor"]
