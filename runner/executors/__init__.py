"""Executors run one cell's job and return its reconciled result, chosen by name from one dict.

local: a subprocess of this machine's Python; docker: a container of the engine's image;
ray: each cell on a node of a Ray cluster, run there by that node's local or docker executor.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.errors import UserError
from runner.executors import docker, local, ray
from runner.executors.docker import DockerExecutor
from runner.executors.local import LocalExecutor
from runner.job import Executor, ExecutorOptions

EXECUTORS: dict[str, Callable[[ExecutorOptions], Executor]] = {
    "docker": docker.from_options,
    "local": local.from_options,
    "ray": ray.from_options,
}


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    """The executor of that name, ready for options.cells; an unknown name is a user error."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choose one of {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name](options)


__all__ = ["EXECUTORS", "DockerExecutor", "Executor", "ExecutorOptions", "LocalExecutor", "make_executor"]
