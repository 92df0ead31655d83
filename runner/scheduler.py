"""Run cells one at a time, or several at once when their GPU sets are disjoint; shared by every executor.

A cell holds its GPUs while it runs; a CPU-only cell holds the host's CPU, so two
CPU cells never overlap and distort each other. Cells start in matrix order
whenever their resources are free; with max_parallel=1 the order is exactly
the matrix order. No GPU ever runs two cells at once. Where a cluster places
the cells (exclusive=False), every item may start at once: the cluster holds
and queues the resources.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

CPU = "cpu"


def resources(gpus: Sequence[int]) -> frozenset[Any]:
    return frozenset(gpus) if gpus else frozenset([CPU])


def run_scheduled(
    items: list[T],
    gpus_of: Callable[[T], Sequence[int]],
    run_one: Callable[[T], Any],
    max_parallel: int = 1,
    on_interrupt: Callable[[], None] | None = None,
    exclusive: bool = True,
) -> list[Any]:
    """Run run_one over items; return their outcomes in item order.

    On KeyboardInterrupt no new item starts, on_interrupt() is called (to stop
    the running ones), the running items finish (a further interrupt only stops
    them again), and the interrupt propagates.
    """
    outcomes: list[Any] = [None] * len(items)
    pending = list(range(len(items)))
    busy: set[Any] = set()
    running = 0
    lock = threading.Condition()
    failures: list[BaseException] = []

    def held_by(item: T) -> frozenset[Any]:
        return resources(gpus_of(item)) if exclusive else frozenset()

    def worker(index: int, held: frozenset[Any]) -> None:
        nonlocal running
        try:
            outcomes[index] = run_one(items[index])
        except BaseException as exc:  # a bug in run_one: stop scheduling, re-raise below
            failures.append(exc)
        finally:
            with lock:
                busy.difference_update(held)
                running -= 1
                lock.notify_all()

    def wait_until_idle() -> None:
        """Wait for every started item to finish, on the condition rather than Thread.join(): a
        KeyboardInterrupt that lands in join() makes CPython (up to 3.12; bpo-45274's handling) mark the
        still-running thread as stopped, so the run would exit while its cell was being stopped, and that
        cell's result would be lost (seen on the GPU machine: a one-cell run, interrupted by `timeout`)."""
        with lock:
            while running:
                lock.wait()

    threads: list[threading.Thread] = []
    try:
        with lock:
            while pending and not failures:
                ready = next((i for i in pending if not held_by(items[i]) & busy), None)
                if ready is None or running >= max_parallel:
                    lock.wait()
                    continue
                pending.remove(ready)
                held = held_by(items[ready])
                busy.update(held)
                running += 1
                thread = threading.Thread(target=worker, args=(ready, held), daemon=True)
                threads.append(thread)
                thread.start()
        wait_until_idle()
    except KeyboardInterrupt:
        if on_interrupt:
            on_interrupt()
        _wait_for(wait_until_idle, on_interrupt)
        raise
    for thread in threads:
        thread.join()  # each has finished (running is 0): this only reaps it
    if failures:
        raise failures[0]
    return outcomes


def _wait_for(wait_until_idle: Callable[[], None], on_interrupt: Callable[[], None] | None) -> None:
    """Let every running item wrap up (record its result, remove its container). A second Ctrl-C
    meanwhile stops them again rather than leaving them half done."""
    while True:
        try:
            wait_until_idle()
            return
        except KeyboardInterrupt:
            if on_interrupt:
                on_interrupt()
