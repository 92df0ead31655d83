"""Executors run one prepared cell and return its reconciled result: local subprocess or Docker container."""

from __future__ import annotations

from runner.executors.docker import DockerExecutor
from runner.executors.local import LocalExecutor

__all__ = ["DockerExecutor", "LocalExecutor"]
