"""Run cells one at a time, or several at once when their GPU sets are disjoint; shared by every executor.

A cell holds its GPUs while it runs; a CPU-only cell holds the host's CPU, so two
CPU cells never overlap and distort each other. Cells start in matrix order
whenever their resources are free; with max_parallel=1 the order is exactly
the matrix order. No GPU ever runs two cells at once.
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

    threads: list[threading.Thread] = []
    try:
        with lock:
            while pending and not failures:
                ready = next((i for i in pending if not resources(gpus_of(items[i])) & busy), None)
                if ready is None or running >= max_parallel:
                    lock.wait()
                    continue
                pending.remove(ready)
                held = resources(gpus_of(items[ready]))
                busy.update(held)
                running += 1
                thread = threading.Thread(target=worker, args=(ready, held), daemon=True)
                threads.append(thread)
                thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        if on_interrupt:
            on_interrupt()
        _wait_for(threads, on_interrupt)
        raise
    if failures:
        raise failures[0]
    return outcomes


def _wait_for(threads: list[threading.Thread], on_interrupt: Callable[[], None] | None) -> None:
    """Let every running item wrap up (record its result, remove its container). A second Ctrl-C
    meanwhile stops them again rather than leaving them half done."""
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                if on_interrupt:
                    on_interrupt()
