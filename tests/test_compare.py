"""`python -m runner compare`: committed GPU run folders compared row by row, for real."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from runner.compare import verdict

REPO = Path(__file__).resolve().parents[1]


def test_a_change_counts_only_outside_both_runs_spread():
    assert verdict([200.0, 204.0, 202.0], [203.0, 199.0, 201.0], higher_is_better=True) == "no change"
    assert verdict([200.0, 204.0], [205.0, 206.0], higher_is_better=True) == "faster"
    assert verdict([10.0, 11.0], [12.0, 13.0], higher_is_better=False) == "slower"  # TTFT went up
    assert verdict([], [1.0], higher_is_better=True) == ""  # a side that did not measure: no verdict


def test_compare_two_committed_folders(runner_cli, tmp_path):
    out = tmp_path / "cmp"
    done = runner_cli("compare", "results/h200/vllm", "results/h200x2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((out / "compare.csv").open()))
    by_cell = {r["Cell A"]: r for r in rows if r["Cell A"]}
    # the same cell ids in both folders: matched by id; every one of A's rows found in B
    assert set(by_cell) == {p.stem for p in (REPO / "results/h200/vllm/cells").glob("*.json")}
    bf16 = by_cell["vllm-9f9f543ea0f8"]
    assert bf16["Cell B"] == "vllm-9f9f543ea0f8" and bf16["Tok/s verdict"] == "no change"
    assert abs(float(bf16["Tok/s A"]) - 204.27) < 0.01 and abs(float(bf16["Tok/s B"]) - 204.15) < 0.01
    eager = by_cell["vllm-a959cd2336fa"]  # 48.4 -> 68.3 tok/s, ranges apart: a real change
    assert eager["Tok/s verdict"] == "faster" and float(eager["Tok/s change %"]) > 40
    only_b = [r for r in rows if not r["Cell A"]]  # B's two-GPU and llama.cpp rows: listed, not matched
    assert only_b and all(r["Status A"] == "absent" for r in only_b)
    text = (out / "compare.md").read_text()
    assert "| Hardware | NVIDIA H200; driver 580.159.04" in text and "vLLM 0.24.0" in text
    page = (out / "compare.html").read_text()
    assert page.count('<table class="sortable">') == 2 and "https://" not in page


def test_rows_whose_ids_differ_match_by_engine_settings_and_gpu_count(runner_cli, tmp_path):
    other = tmp_path / "b"
    shutil.copytree(REPO / "results" / "h200" / "vllm", other)
    cell = other / "cells" / "vllm-9f9f543ea0f8.json"
    result = json.loads(cell.read_text())
    result["cell"]["id"] = "vllm-000000000000"  # as after a workload or model-spec change
    (other / "cells" / "vllm-000000000000.json").write_text(json.dumps(result))
    cell.unlink()
    done = runner_cli("compare", "results/h200/vllm", str(other), "-o", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    rows = {r["Cell A"]: r for r in csv.DictReader((tmp_path / "cmp" / "compare.csv").open())}
    assert rows["vllm-9f9f543ea0f8"]["Cell B"] == "vllm-000000000000"
    assert rows["vllm-9f9f543ea0f8"]["Tok/s verdict"] == "no change"  # the same numbers


@pytest.mark.parametrize(
    ("args", "message"),
    [(["results"], "name at least two run folders"), (["results", "results/h200/vllm"], "not a run folder")],
)
def test_compare_mistakes_say_what_to_name(runner_cli, args, message):
    done = runner_cli("compare", *args)
    assert done.returncode != 0 and message in done.stderr
