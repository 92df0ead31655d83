"""``python -m runner`` end to end on CPU, one small real run reused by several checks:
``--parallel 2`` never overlaps CPU cells, ``--table-only`` re-renders without running
anything, and an earlier ok result is kept only when it was measured on the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real Transformers cells, run once per module

MATRIX = "tests/fixtures/matrices/e2e_rerun.yaml"


def cell_ids(runner_cli) -> list[str]:
    done = runner_cli(MATRIX, "--list", timeout=60)
    assert done.returncode == 0, done.stderr
    return [line.split("  ", 1)[0] for line in done.stdout.splitlines()]


def result(folder: Path, cell_id: str) -> dict:
    return json.loads((folder / "cells" / f"{cell_id}.json").read_text())


@pytest.fixture(scope="module")
def parallel_run(runner_cli, model_store, tmp_path_factory):
    """Both CPU cells of e2e_rerun.yaml, run with --parallel 2 (the folder is read-only for tests)."""
    folder = tmp_path_factory.mktemp("parallel") / "run"
    done = runner_cli(MATRIX, "-o", str(folder), "--store", str(model_store), "--parallel", "2", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, folder


@pytest.fixture
def run_copy(parallel_run, tmp_path) -> Path:
    """A private copy of the parallel run's folder (timestamps kept), for tests that change it."""
    copy = tmp_path / "run"
    shutil.copytree(parallel_run[1], copy)
    return copy


def test_parallel_two_cpu_cells_run_one_after_the_other(parallel_run, runner_cli):
    done, folder = parallel_run
    first, second = cell_ids(runner_cli)
    assert done.stdout.rstrip().endswith("this run: 2 ok, 0 not run here, 0 failed")
    # the runner's own log: the second cell starts only after the first has finished
    events = [" ".join(line.split()[:2]) for line in done.stdout.splitlines() if line.startswith("[transformers-")]
    assert events == [f"[{first}] running", f"[{first}] ok", f"[{second}] running", f"[{second}] ok"]
    a, b = result(folder, first), result(folder, second)
    assert a["status"] == b["status"] == "ok"
    # the engines' own clocks agree: the second started no earlier than the first finished
    assert b["started_at"] >= a["finished_at"], (a["started_at"], a["finished_at"], b["started_at"])
    # and the files: the second cell's spec was written after the first cell's result was published
    assert (folder / "spec" / f"{second}.json").stat().st_mtime_ns >= (
        folder / "cells" / f"{first}.json"
    ).stat().st_mtime_ns
    invocations = json.loads((folder / "run.json").read_text())["invocations"]
    assert len(invocations) == 1
    assert "--parallel 2" in invocations[0]["command"]


def test_table_only_rerenders_the_same_table_without_running(run_copy, runner_cli, model_store):
    folder = run_copy
    before = {name: (folder / name).read_text() for name in ("table.md", "table.csv", "table.json")}
    results_before = {p.name: p.read_bytes() for p in (folder / "cells").iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "cells").iterdir()}
    for name in before:
        (folder / name).unlink()

    done = runner_cli(MATRIX, "-o", str(folder), "--store", str(model_store), "--table-only", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    assert "running" not in done.stdout
    assert "kept earlier" not in done.stdout
    assert "cell(s) from" not in done.stdout  # nothing was scheduled
    assert f"table: {folder.resolve() / 'table.md'} (2 of 2 cells have results)" in done.stdout
    assert (folder / "table.csv").read_text() == before["table.csv"]
    assert (folder / "table.md").read_text() == before["table.md"]
    assert (folder / "table.json").read_text() == before["table.json"]
    # the results are untouched and no cell process ran (no new files anywhere)
    assert {p.name: p.read_bytes() for p in (folder / "cells").iterdir()} == results_before
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "cells").iterdir()} == stamps


def test_table_only_on_an_empty_folder_is_one_line(runner_cli, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    done = runner_cli(MATRIX, "-o", str(folder), "--table-only", timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and done.stderr == lines[0] + "\n", done.stderr
    assert lines[0].startswith("error: ")
    assert "no results" in lines[0]
    assert str(folder.resolve()) in lines[0]
    assert list(folder.iterdir()) == []


def test_earlier_result_on_a_changed_checkpoint_is_measured_again(run_copy, runner_cli, model_store, tiny_model):
    folder = run_copy
    first, second = cell_ids(runner_cli)
    moved = result(folder, first)
    assert moved["status"] == "ok" and moved["model"]["path"] == str(tiny_model.resolve())
    assert moved["measured_with"]["model_fingerprint"] == moved["model"]["fingerprint"]
    moved["measured_with"]["model_fingerprint"] = "a checkpoint since rewritten in place"
    (folder / "cells" / f"{first}.json").write_text(json.dumps(moved, indent=2) + "\n")
    kept_bytes = (folder / "cells" / f"{second}.json").read_bytes()

    done = runner_cli(MATRIX, "-o", str(folder), "--store", str(model_store), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"[{first}] measuring again: the checkpoint changed" in done.stdout
    assert f"[{first}] running HF Transformers" in done.stdout
    assert f"[{first}] kept earlier" not in done.stdout
    assert f"[{second}] kept earlier ok result" in done.stdout
    assert f"[{second}] running" not in done.stdout
    assert done.stdout.rstrip().endswith("this run: 2 ok, 0 not run here, 0 failed")
    remeasured = result(folder, first)
    assert remeasured["status"] == "ok"
    assert remeasured["model"]["path"] == str(tiny_model.resolve())
    assert remeasured["finished_at"] >= moved["finished_at"]
    assert remeasured["metrics"]["tokens_per_s"]["values"] != moved["metrics"]["tokens_per_s"]["values"]
    assert (folder / "cells" / f"{second}.json").read_bytes() == kept_bytes
