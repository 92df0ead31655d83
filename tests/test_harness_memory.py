"""entrypoints/harness.py's CPU memory: the peak RSS of the cell's whole process tree, so an engine
that runs its model in worker processes (vLLM's EngineCore and workers) is not reported as the
few hundred MiB of its front-end process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import harness  # in-container module, found on the entrypoints path

HOLD_MIB = 200
CHILD = f"import sys, time; block = bytearray({HOLD_MIB} * 2**20); print('ready', flush=True); time.sleep(60)"


def test_tree_rss_counts_worker_processes(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    own_before = harness.process_tree_rss_mib(os.getpid())
    sampler = harness.MemorySampler()
    sampler.start()
    worker = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        with_worker = harness.process_tree_rss_mib(os.getpid())
        deadline = time.monotonic() + 10
        while sampler.tree_peak_mib < own_before + HOLD_MIB and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
    memory = sampler.stop()
    assert with_worker > own_before + 0.9 * HOLD_MIB
    assert memory["kind"] == "process-tree-peak-rss"
    assert memory["peak_mib"] == max(memory["tree_peak_mib"], memory["own_peak_rss_mib"])
    assert memory["tree_peak_mib"] > memory["own_peak_rss_mib"] + 0.9 * HOLD_MIB - own_before
    assert harness.process_tree_rss_mib(os.getpid()) < with_worker - 0.9 * HOLD_MIB  # the worker is gone


def test_a_gpu_cell_without_nvml_reports_no_memory_rather_than_host_rss(monkeypatch):
    # no driver here (CI); on a GPU host, no GPU has this UUID: either way NVML cannot read the cell's GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000000-0000-0000-0000-000000000000")
    sampler = harness.MemorySampler()
    sampler.start()
    memory = sampler.stop()
    assert memory["kind"] == "unmeasured" and memory["peak_mib"] is None
    assert memory["reason"].startswith("NVML unavailable: ")
    assert memory["host_peak_rss_mib"] > 0  # kept, but not as the cell's memory
