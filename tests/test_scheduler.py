"""runner.scheduler.run_scheduled with real threads: which items run at the same time.

Overlap that must happen is proven with a threading.Barrier (it breaks if the
other party never arrives); overlap that must not happen is checked from a
record of what was running whenever an item started.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from runner.scheduler import resources, run_scheduled

HOLD_S = 0.05  # how long an item keeps its resources when a test wants a window for a wrong overlap


class Recorder:
    """Records start order, what else was running at each start, and the peak concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.alongside: dict[str, set[str]] = {}
        self.peak = 0

    def enter(self, name: str) -> None:
        with self.lock:
            self.alongside[name] = set(self.running)
            for other in self.running:
                self.alongside[other].add(name)
            self.running.add(name)
            self.started.append(name)
            self.peak = max(self.peak, len(self.running))

    def leave(self, name: str) -> None:
        with self.lock:
            self.running.discard(name)
            self.finished.append(name)

    def together(self, a: str, b: str) -> bool:
        return b in self.alongside.get(a, set())

    def wrap(self, body: Callable[[str], None] = lambda name: None) -> Callable[[tuple[str, list[int]]], str]:
        def run_one(item: tuple[str, list[int]]) -> str:
            name = item[0]
            self.enter(name)
            try:
                body(name)
            finally:
                self.leave(name)
            return f"done {name}"

        return run_one


def gpus_of(item: tuple[str, list[int]]) -> list[int]:
    return item[1]


def test_resources():
    assert resources([0, 2]) == frozenset({0, 2})
    assert resources([]) == frozenset({"cpu"})
    assert not resources([0]) & resources([])


def test_serial_runs_in_item_order_one_at_a_time():
    items = [("a", [0]), ("b", [1]), ("c", []), ("d", [2, 3]), ("e", [0])]
    record = Recorder()
    outcomes = run_scheduled(items, gpus_of, record.wrap(lambda name: threading.Event().wait(0.01)), max_parallel=1)
    assert outcomes == ["done a", "done b", "done c", "done d", "done e"]
    assert record.started == ["a", "b", "c", "d", "e"]
    assert record.finished == ["a", "b", "c", "d", "e"]
    assert record.peak == 1
    assert all(not others for others in record.alongside.values())


def test_default_is_serial():
    record = Recorder()
    outcomes = run_scheduled([("a", [0]), ("b", [1])], gpus_of, record.wrap(lambda name: threading.Event().wait(0.02)))
    assert outcomes == ["done a", "done b"]
    assert record.peak == 1


def test_disjoint_gpus_overlap_with_two_slots():
    both = threading.Barrier(2, timeout=5)
    record = Recorder()
    outcomes = run_scheduled([("a", [0]), ("b", [1])], gpus_of, record.wrap(lambda name: both.wait()), max_parallel=2)
    assert outcomes == ["done a", "done b"]
    assert record.together("a", "b")
    assert record.peak == 2


def test_shared_gpu_never_overlaps_and_later_free_cell_goes_first():
    # a and b share GPU 1; c is on GPU 3 and must start while a runs (b waits for a)
    a_and_c = threading.Barrier(2, timeout=5)

    def body(name: str) -> None:
        if name in ("a", "c"):
            a_and_c.wait()
        if name == "a":
            threading.Event().wait(HOLD_S)  # a window in which a wrong scheduler would start b

    items = [("a", [0, 1]), ("b", [1, 2]), ("c", [3])]
    record = Recorder()
    outcomes = run_scheduled(items, gpus_of, record.wrap(body), max_parallel=2)
    assert outcomes == ["done a", "done b", "done c"]
    assert record.together("a", "c")
    assert not record.together("a", "b")
    assert record.started.index("c") < record.started.index("b")
    assert record.finished.index("a") < record.started.index("b")


def test_same_single_gpu_serialises_even_with_many_slots():
    items = [(name, [0]) for name in "abcd"]
    record = Recorder()
    outcomes = run_scheduled(items, gpus_of, record.wrap(lambda name: threading.Event().wait(0.02)), max_parallel=4)
    assert outcomes == ["done a", "done b", "done c", "done d"]
    assert record.started == ["a", "b", "c", "d"]
    assert record.peak == 1


def test_two_cpu_cells_never_overlap():
    # x (CPU) and g (GPU 0) may overlap; x and y (both CPU) must not
    x_and_g = threading.Barrier(2, timeout=5)

    def body(name: str) -> None:
        if name in ("x", "g"):
            x_and_g.wait()
        if name == "x":
            threading.Event().wait(HOLD_S)

    items = [("x", []), ("y", []), ("g", [0])]
    record = Recorder()
    outcomes = run_scheduled(items, gpus_of, record.wrap(body), max_parallel=2)
    assert outcomes == ["done x", "done y", "done g"]
    assert not record.together("x", "y")
    assert record.together("x", "g")


def test_parallel_limit_is_respected():
    first_two = threading.Barrier(2, timeout=5)

    def body(name: str) -> None:
        if name in ("a", "b"):
            first_two.wait()
            threading.Event().wait(HOLD_S)

    items = [("a", [0]), ("b", [1]), ("c", [2]), ("d", [3])]
    record = Recorder()
    outcomes = run_scheduled(items, gpus_of, record.wrap(body), max_parallel=2)
    assert outcomes == ["done a", "done b", "done c", "done d"]
    assert record.peak == 2
    assert record.together("a", "b")
    assert record.started[:2] in (["a", "b"], ["b", "a"])
    # c took the slot of whichever of a, b finished first: never all three at once
    assert not (record.together("a", "c") and record.together("b", "c"))


def test_outcomes_in_item_order_not_completion_order():
    b_done = threading.Event()

    def body(name: str) -> None:
        if name == "a":
            assert b_done.wait(5)
        else:
            b_done.set()

    record = Recorder()
    outcomes = run_scheduled([("a", [0]), ("b", [1])], gpus_of, record.wrap(body), max_parallel=2)
    assert record.finished == ["b", "a"]
    assert outcomes == ["done a", "done b"]


def test_outcomes_are_whatever_run_one_returns():
    outcomes = run_scheduled([3, 1, 2], lambda item: [item], lambda item: {"square": item * item}, max_parallel=3)
    assert outcomes == [{"square": 9}, {"square": 1}, {"square": 4}]


def test_empty():
    assert run_scheduled([], gpus_of, lambda item: 1 / 0, max_parallel=2) == []


class Boom(Exception):
    pass


def test_exception_propagates_and_stops_scheduling():
    record = Recorder()

    def body(name: str) -> None:
        if name == "b":
            raise Boom("cell b broke")

    with pytest.raises(Boom, match="cell b broke"):
        run_scheduled([("a", [0]), ("b", [0]), ("c", [0])], gpus_of, record.wrap(body), max_parallel=1)
    assert record.started == ["a", "b"]


def test_exception_propagates_after_running_cells_finish():
    a_running = threading.Event()
    release_a = threading.Event()
    record = Recorder()

    def body(name: str) -> None:
        if name == "a":
            a_running.set()
            assert release_a.wait(5)
        if name == "b":
            assert a_running.wait(5)
            release_a.set()
            raise Boom("b")

    with pytest.raises(Boom):
        run_scheduled([("a", [0]), ("b", [1]), ("c", [0])], gpus_of, record.wrap(body), max_parallel=2)
    assert "a" in record.finished  # a was joined before the error surfaced
    assert "c" not in record.started


def test_an_interrupt_while_the_last_item_runs_waits_for_it_to_wrap_up():
    """Ctrl-C while the only (or last) item runs: the interrupt must wait for that item to record its result.

    Regression: the scheduler waited with Thread.join(); a KeyboardInterrupt landing there makes CPython
    (bpo-45274's handling, up to 3.12) mark the still-running thread as stopped, so the run exited while the
    item was wrapping up and its result was lost (a one-cell GPU run stopped by `timeout` left no row).
    """
    stop_asked = threading.Event()
    wrapped_up: list[int] = []

    def run_one(item: int) -> int:
        time.sleep(0.2)  # the scheduler is waiting for this item by now
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the runner gets it
        assert stop_asked.wait(10), "on_interrupt was never called"
        time.sleep(0.3)  # stopping the engine and recording its result take a moment
        wrapped_up.append(item)
        return item

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background pytest inherits it ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            run_scheduled([7], lambda item: [0], run_one, on_interrupt=stop_asked.set)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert wrapped_up == [7]
