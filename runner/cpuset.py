"""The CPUs a CPU cell runs on: chosen once per run, pinned by the executor, recorded in every CPU result.

By default a CPU cell may use every CPU this runner may use (its affinity, which
a container or `taskset` may already restrict); `--cpus 0-3` picks a subset. The
local executor starts the cell under `taskset`, the docker executor gives the
container `--cpuset-cpus`: the engine's threads, and its worker processes, run on
exactly that set. The set is part of what a CPU result was measured with
(runner/reuse.py), and the harness records the set it saw with the threads the
engine computed with (the table's header says them). A serving cell on the CPU
leaves part of the set to its load generators (split_for_clients): sharing the
server's CPUs, a load generator waits for them between the tokens it times.
"""

from __future__ import annotations

import os
import re

from runner.errors import UserError

_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def available() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), in order."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def format_cpus(cpus: tuple[int, ...] | list[int]) -> str:
    """A CPU list as taskset and Docker write it: runs joined by '-', runs separated by ',' (0-3,8)."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def named(cpus: tuple[int, ...] | list[int] | str) -> str:
    """'CPU 3' or 'CPUs 0-3,8', for messages and the table (a string is a list as format_cpus writes it)."""
    text = cpus if isinstance(cpus, str) else format_cpus(cpus)
    return f"CPU {text}" if text.isdigit() else f"CPUs {text}"


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0-3,8' -> (0, 1, 2, 3, 8); ValueError for anything else."""
    cpus: set[int] = set()
    for item in text.replace(" ", "").split(","):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(item or "(empty)")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(item)
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def choose(given: str | None, usable: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The CPU set of this run's CPU cells: the --cpus list (a subset of the usable CPUs), else all of them."""
    usable = available() if usable is None else usable
    if given is None:
        return usable
    try:
        cpus = parse_cpus(given)
    except ValueError as exc:
        raise UserError(
            f"--cpus {given}: {exc} is not a CPU number or range; give a list such as 0-3 or 0,2,4 "
            f"(this runner may use {format_cpus(usable)})"
        ) from None
    outside = sorted(set(cpus) - set(usable))
    if outside:
        raise UserError(
            f"--cpus {given}: CPU {format_cpus(outside)} is not available to this runner; give CPUs among "
            f"{format_cpus(usable)} (or leave --cpus out to use all of them)"
        )
    return cpus


MOST_CLIENT_CPUS = 8


def split_for_clients(cpus: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A CPU serving cell's set, split between its server and the load generators that time it: a quarter of
    it (at most MOST_CLIENT_CPUS) from its end to the clients, the rest to the server. Where that quarter is
    a single CPU (fewer than 8 in the set), the clients get the whole set: that CPU is theirs alone, the
    server's they share. One CPU cannot be split: then they share it.

    A closed-loop load generator spends little CPU, but it must run the moment a token arrives: on the server's
    CPUs, whose threads keep them busy, it waits for one and times that wait as the server's. AIPerf runs as a
    dozen processes that pass each token on, so on a CPU of its own they wait for each other. On a 2-CPU machine
    (tiny model, a CPU vLLM server, concurrency 1) AIPerf measured a median TTFT of 37 ms sharing both CPUs
    with the server, 16 ms (and half the output rate) alone on one CPU with the server on the other, and 6 ms
    on both with the server on one, against 6.5-9 ms from vllm bench serve (one process)."""
    if len(cpus) < 2:
        return cpus, cpus
    clients = min(MOST_CLIENT_CPUS, max(1, len(cpus) // 4))
    return cpus[:-clients], (cpus[-clients:] if clients > 1 else cpus)
