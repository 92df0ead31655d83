"""runner.session.run_cells with the real LocalExecutor and a tiny real entrypoint script:
results published atomically, earlier ok results kept, failures re-run, --force re-measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cpuset import available, format_cpus, named
from runner.executors import LocalExecutor, local
from runner.expand import expand
from runner.gpu_guard import GpuGuard, GpuUse
from runner.host import hardware_of
from runner.matrix import parse_matrix
from runner.results import read_result
from runner.session import cell_paths, run_cells
from runner.shared import RESULT_SCHEMA_VERSION

MODEL = {"source": "synthetic", "name": "tiny-mistral", "path": "/nowhere", "synthetic": True}

# ok for every cell except bf16, which fails once per "fail budget" line; every call is counted
SCRIPT = """\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--spec", required=True)
parser.add_argument("--output", required=True)
args = parser.parse_args()
spec = json.load(open(args.spec))
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.txt"), "a") as calls:
    calls.write(spec["cell"]["id"] + "\\n")
ok = spec["cell"]["settings"]["dtype"] != "bf16" or os.path.exists(os.path.join(here, "bf16-works"))
doc = {
    "schema_version": 1, "cell": spec["cell"], "model": spec["model"], "workload": spec["workload"],
    "status": "ok" if ok else "failed", "reason": None if ok else "RuntimeError: bf16 unsupported here",
    "metrics": {"tokens_per_s": {"median": 5.0, "min": 5.0, "max": 5.0, "values": [5.0]}} if ok else {},
    "memory": {"kind": "process-peak-rss", "peak_mib": 1.0},
}
json.dump(doc, open(args.output, "w"))
sys.exit(0 if ok else 1)
"""


def install_script(tmp_path: Path, monkeypatch) -> Path:
    """SCRIPT as the transformers entrypoint the local executor starts."""
    folder = tmp_path / "entrypoints"
    folder.mkdir()
    (folder / "run_transformers.py").write_text(SCRIPT)
    monkeypatch.setattr(local, "ENTRYPOINTS", folder)
    return folder


@pytest.fixture
def setup(tmp_path, monkeypatch):
    folder = install_script(tmp_path, monkeypatch)
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"prompt_tokens": 8, "new_tokens": 8, "warmup": 0, "repetitions": 1},
        "defaults": {"gpus": [], "timeout_s": 60},
        "engines": {"transformers": {"axes": {"dtype": ["fp32", "bf16", "fp16"]}}},
    }
    matrix = parse_matrix(raw, tmp_path / "m.yaml")
    cells = expand(matrix)
    return matrix, cells, tmp_path / "run", folder


def calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_run_cells_keeps_ok_reruns_failed_and_forces(setup):
    matrix, cells, run, folder = setup
    fp32, bf16, fp16 = cells
    messages: list[str] = []

    first = run_cells(matrix, cells, MODEL, run, LocalExecutor(), log=messages.append)
    assert [r["cell"]["id"] for r in first] == [c.id for c in cells]
    assert [r["status"] for r in first] == ["ok", "failed", "ok"]
    assert first[1]["reason"] == "RuntimeError: bf16 unsupported here"
    assert calls(folder) == [c.id for c in cells]
    for result in first:
        assert result["executor"] == "local"
        assert result["wall_s"] > 0
    for cell, result in zip(cells, first, strict=False):
        paths = cell_paths(run, cell)
        assert read_result(paths["result_path"]) == json.loads(json.dumps(result))
        assert paths["spec_path"].is_file() and paths["log_path"].is_file()
    # the child's scratch files are gone, only the published results remain
    assert sorted(p.name for p in (run / "cells").iterdir()) == sorted(f"{c.id}.json" for c in cells)
    every_cpu = format_cpus(available())  # CPU cells run on every CPU the runner may use unless told otherwise
    assert f"[{fp32.id}] running HF Transformers: FP32; attn_implementation=sdpa on {named(every_cpu)}" in messages
    assert f"[{bf16.id}] failed: RuntimeError: bf16 unsupported here" in messages

    # second run: ok cells are kept, the failed one is measured again (and now works)
    (folder / "bf16-works").write_text("")
    messages.clear()
    second = run_cells(matrix, cells, MODEL, run, LocalExecutor(), log=messages.append)
    assert calls(folder) == [c.id for c in cells] + [bf16.id]
    assert [r["status"] for r in second] == ["ok", "ok", "ok"]
    assert second[0] == read_result(cell_paths(run, fp32)["result_path"])
    same = f"same checkpoint, engine environment, executor and hardware, {named(every_cpu)}"
    assert f"[{fp32.id}] kept earlier ok result (FP32; attn_implementation=sdpa): {same}" in messages
    assert f"[{fp16.id}] kept earlier ok result (FP16; attn_implementation=sdpa): {same}" in messages
    assert f"[{bf16.id}] measuring again: the earlier result was failed" in messages
    assert second[1]["measured_with"] == {
        "model_fingerprint": None,
        "result_schema": RESULT_SCHEMA_VERSION,
        "executor": "local",
        "engine_environment": LocalExecutor().environment(bf16),
        "hardware": hardware_of(()),
        "cpus": every_cpu,
    }
    assert second[1]["measured_with"]["hardware"].startswith("CPU: ")

    # force: everything is measured again
    messages.clear()
    forced = run_cells(matrix, cells, MODEL, run, LocalExecutor(), force=True, log=messages.append)
    assert f"[{fp32.id}] measuring again: --force" in messages
    assert [r["status"] for r in forced] == ["ok", "ok", "ok"]
    assert calls(folder) == [c.id for c in cells] + [bf16.id] + [c.id for c in cells]


def test_run_cells_subset_and_parallel(setup):
    matrix, cells, run, folder = setup
    results = run_cells(matrix, [cells[2], cells[0]], MODEL, run, LocalExecutor(), max_parallel=2, log=lambda m: None)
    assert [r["cell"]["id"] for r in results] == [cells[2].id, cells[0].id]
    assert sorted(calls(folder)) == sorted([cells[0].id, cells[2].id])
    assert read_result(cell_paths(run, cells[1])["result_path"]) is None


def test_a_busy_gpu_fails_its_cell_and_the_rest_go_on(tmp_path, monkeypatch):
    """The guard reads the driver before each GPU cell: GPU 0 stays busy, GPU 1 is free."""
    folder = install_script(tmp_path, monkeypatch)
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"prompt_tokens": 8, "new_tokens": 8, "warmup": 0, "repetitions": 1},
        "defaults": {"gpus": [0], "timeout_s": 60},
        "engines": {"transformers": {"include": [{"dtype": "fp32"}, {"dtype": "fp16", "gpus": [1]}]}},
    }
    matrix = parse_matrix(raw, tmp_path / "m.yaml")
    cells = expand(matrix)
    driver = {
        0: GpuUse(0, "GPU-a", 70_000.0, ((4242, 69_500.0),)),
        1: GpuUse(1, "GPU-b", 3.0, ()),
    }
    messages: list[str] = []
    guard = GpuGuard(read=lambda: driver, wait_s=0.3, poll_s=0.1, log=messages.append)
    results = run_cells(matrix, cells, MODEL, tmp_path / "run", LocalExecutor(), log=messages.append, guard=guard)
    assert [r["status"] for r in results] == ["failed", "ok"]
    assert results[0]["reason"] == (
        "GPU busy: GPU 0 has 70000 MiB in use (pid 4242 (69500 MiB)) after waiting 0 s; not measured on a busy GPU"
    )
    assert calls(folder) == [cells[1].id]  # nothing was started on the busy GPU
    assert "waiting for GPU 0 to be free: GPU 0 has 70000 MiB in use (pid 4242 (69500 MiB))" in messages


def test_a_result_is_kept_only_while_what_it_was_measured_with_holds(setup):
    matrix, cells, run, folder = setup
    fp32 = cells[0]
    messages: list[str] = []

    def again(model=MODEL) -> list[str]:
        messages.clear()
        run_cells(matrix, [fp32], model, run, LocalExecutor(), log=messages.append)
        return [m.split("] ", 1)[1] for m in messages if m.startswith(f"[{fp32.id}] measuring again")]

    run_cells(matrix, [fp32], MODEL, run, LocalExecutor(), log=messages.append)
    assert again() == []  # nothing changed: kept
    assert again({**MODEL, "fingerprint": "rewritten in place"}) == ["measuring again: the checkpoint changed"]
    # the harness (any file the cell's image or interpreter would run) changed
    (folder / "harness.py").write_text("# a newer harness\n")
    assert again({**MODEL, "fingerprint": "rewritten in place"}) == [
        "measuring again: the engine's image or environment changed"
    ]
    # a result an older runner wrote records nothing of this: measured again rather than trusted
    path = cell_paths(run, fp32)["result_path"]
    old = json.loads(path.read_text())
    del old["measured_with"]
    path.write_text(json.dumps(old))
    assert again({**MODEL, "fingerprint": "rewritten in place"}) == [
        "measuring again: the earlier result does not record what it was measured with (an older runner wrote it)"
    ]
    # another executor or other hardware
    old = json.loads(path.read_text())
    old["measured_with"]["executor"], old["measured_with"]["hardware"] = "docker", "GPUs: NVIDIA H100; driver 1"
    path.write_text(json.dumps(old))
    assert again({**MODEL, "fingerprint": "rewritten in place"}) == [
        "measuring again: another executor; other hardware or driver"
    ]
    assert calls(folder) == [fp32.id] * 5
