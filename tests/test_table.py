"""Table arithmetic on hand-built results shaped like the harness writes them."""

from __future__ import annotations

import csv
import json
import statistics
from typing import Any

import pandas as pd
import pytest

from runner.table import COLUMNS, caption, details_frame, display_frame, render, rows


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def _cell(cid: str, label: list[str]) -> dict[str, Any]:
    return {
        "id": cid,
        "engine": "transformers",
        "software": "HF Transformers",
        "settings": {},
        "label": label,
        "gpus": [],
        "timeout_s": 60,
    }


MODEL = {"source": "synthetic", "name": "tiny-mistral", "path": "/x", "synthetic": True, "parameters": 598336}
WORKLOAD = {"prompt_tokens": 32, "new_tokens": 32, "batch_size": 1, "warmup": 1, "repetitions": 3}


def ok(cid: str, label: list[str], tps: list[float], mem: float, warnings: list[str] | None = None) -> dict[str, Any]:
    """An ok result as entrypoints/harness.py run() writes it (CPU memory kind)."""
    new_tokens = WORKLOAD["new_tokens"]
    return {
        "schema_version": 1,
        "cell": _cell(cid, label),
        "model": MODEL,
        "workload": WORKLOAD,
        "status": "ok",
        "reason": None,
        "metrics": {
            "load_s": 0.5,
            "warmup_s": [0.2],
            "generation_s": _summary([new_tokens / t for t in tps]),
            "tokens_per_s": _summary(tps),
            "total_tokens_per_s": _summary(tps),
            "ttft_s": _summary([0.004, 0.005, 0.006]),
            "decode_tokens_per_s": _summary([t * 1.1 for t in tps]),
            "allocator": None,
        },
        "memory": {"kind": "process-tree-peak-rss", "peak_mib": mem, "nvml_error": None},
        "warnings": warnings or [],
        "environment": {
            "python": "3.11",
            "cpu_count": 2,
            "torch": "2.13.0+cpu",
            "transformers": "5.17.0",
            "engine_version": "5.17.0",
        },
        "exit_code": 0,
    }


def failed(cid: str, label: list[str], reason: str, status: str = "failed") -> dict[str, Any]:
    """A failed result as the harness writes it: metrics empty, memory still sampled."""
    return {
        "schema_version": 1,
        "cell": _cell(cid, label),
        "model": MODEL,
        "workload": WORKLOAD,
        "status": status,
        "reason": reason,
        "metrics": {},
        "memory": {"kind": "process-tree-peak-rss", "peak_mib": 390.0, "nvml_error": None},
        "warnings": [],
        "environment": {"python": "3.11", "cpu_count": 2},
        "exit_code": 1,
    }


BASE = ok("base", ["FP32", "attn_implementation=eager"], [100.0, 80.0, 120.0], 400.0)
FAST = ok(
    "fast",
    ["BF16", "attn_implementation=eager"],
    [250.0, 240.0, 260.0],
    300.0,
    warnings=["UserWarning: something odd", "FutureWarning: ignored in notes"],
)
WORDY = ok(
    "wordy",
    ["BF16"],
    [250.0, 240.0, 260.0],
    300.0,
    warnings=[
        "UserWarning: \nOnline softmax is disabled on the fly since Inductor decides to\nsplit the reduction. "
        + "x " * 99
    ],
)
SLOW = ok("slow", ["BF16", "torch.no_grad()"], [50.0, 40.0, 60.0], 500.0)
BROKEN = failed("broken", ["BF16", "attn_implementation=flash_attention_2"], "ImportError: FlashAttention2 missing")
LATE = failed("late", ["FP16"], "timeout: no result after 1 s; process group killed", status="timeout")


def by_cell(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {record["Cell"]: record for record in frame.to_dict(orient="records")}


def test_speed_and_memory_relative_to_baseline():
    frame = rows([BASE, FAST, SLOW, BROKEN, LATE], "base")
    assert list(frame["Cell"]) == ["base", "fast", "slow", "broken", "late"]
    got = by_cell(frame)
    assert got["base"]["Avg Tok/s"] == 100.0  # median, not mean
    assert got["base"]["Tok/s min"] == 80.0 and got["base"]["Tok/s max"] == 120.0
    assert got["base"]["Speed X"] == 1.0
    assert got["base"]["Max mem %"] == 100.0
    assert got["base"]["Baseline"] and not got["fast"]["Baseline"]
    assert got["fast"]["Avg Tok/s"] == 250.0
    assert got["fast"]["Speed X"] == pytest.approx(250.0 / 100.0)
    assert got["fast"]["Max Mem (MiB)"] == 300.0
    assert got["fast"]["Max mem %"] == pytest.approx(100 * 300.0 / 400.0)
    assert got["slow"]["Speed X"] == pytest.approx(0.5)
    assert got["slow"]["Max mem %"] == pytest.approx(125.0)
    assert got["base"]["TTFT (ms)"] == pytest.approx(5.0)
    assert got["base"]["Decode tok/s"] == pytest.approx(110.0)
    assert got["base"]["Load (s)"] == 0.5
    assert got["base"]["Status"] == "ok"


def test_ok_notes():
    got = by_cell(rows([BASE, FAST], "base"))
    # BASE's repetitions (80, 100, 120) spread ±20 %: flagged; FAST's (240, 250, 260) ±4 %: not
    assert got["base"]["Notes"] == (
        "CPU: memory is the peak RSS of the cell's processes; unstable: tok/s varies ±20.0% between repetitions "
        "(CV over 10%)"
    )
    assert got["fast"]["Notes"] == "CPU: memory is the peak RSS of the cell's processes; UserWarning: something odd"
    assert got["base"]["Spread (CV %)"] == pytest.approx(20.0) and got["fast"]["Spread (CV %)"] == pytest.approx(4.0)


def test_multi_line_warning_is_one_short_line():
    notes = by_cell(rows([BASE, WORDY], "base"))["wordy"]["Notes"]
    warning = notes.split("; ")[-1]
    assert warning.startswith("UserWarning: Online softmax is disabled on the fly since Inductor decides to split the")
    assert "\n" not in notes and "  " not in warning
    assert len(warning) == 120 and warning.endswith("…")


def test_failed_rows_are_kept_with_reason_and_blank_numbers():
    frame = rows([BASE, BROKEN, LATE], "base")
    got = by_cell(frame)
    assert len(frame) == 3
    assert got["broken"]["Status"] == "failed"
    assert got["broken"]["Notes"] == "failed: ImportError: FlashAttention2 missing"
    assert got["late"]["Status"] == "timeout"
    assert got["late"]["Notes"].startswith("timeout: ")
    assert "no result after 1 s" in got["late"]["Notes"]
    for cid in ("broken", "late"):
        for column in ("Avg Tok/s", "Max Mem (MiB)", "Speed X", "Max mem %", "TTFT (ms)", "Decode tok/s"):
            assert pd.isna(got[cid][column]), (cid, column)


def test_failed_row_without_reason():
    result = failed("anon", ["FP32"], None)
    assert by_cell(rows([result], "anon"))["anon"]["Notes"] == "failed: no reason recorded"


def test_failed_baseline_leaves_relative_columns_empty():
    frame = rows([failed("base", ["FP32"], "RuntimeError: boom"), FAST, SLOW], "base")
    got = by_cell(frame)
    assert got["fast"]["Avg Tok/s"] == 250.0
    assert got["fast"]["Max Mem (MiB)"] == 300.0
    for cid in ("base", "fast", "slow"):
        assert pd.isna(got[cid]["Speed X"])
        assert pd.isna(got[cid]["Max mem %"])


def test_baseline_without_result_leaves_relative_columns_empty():
    got = by_cell(rows([FAST, SLOW], "not-run"))
    assert pd.isna(got["fast"]["Speed X"]) and pd.isna(got["slow"]["Max mem %"])
    assert not got["fast"]["Baseline"]


def test_caption_says_why_relative_columns_are_empty(tmp_path):
    printed = render([failed("base", ["FP32"], "RuntimeError: boom"), FAST], "base", tmp_path)
    line = "Speed X and Max mem % are empty: the baseline (HF Transformers FP32) failed; see its row."
    assert line in printed
    assert line in (tmp_path / "table.md").read_text()
    missing = "the baseline cell not-run has no result here; run it too (--only not-run)"
    assert missing in render([FAST], "not-run", tmp_path)
    assert "are empty" not in render([BASE, FAST], "base", tmp_path)


def test_failed_row_with_metrics_shows_no_numbers():
    reported_ok = ok("liar", ["BF16"], [300.0, 300.0, 300.0], 350.0)
    reported_ok.update(status="failed", reason="reported ok but exited with code 1", exit_code=1)
    got = by_cell(rows([BASE, reported_ok], "base"))["liar"]
    assert got["Notes"] == "failed: reported ok but exited with code 1"
    assert pd.isna(got["Max Mem (MiB)"])
    assert pd.isna(got["Avg Tok/s"])
    assert pd.isna(got["Speed X"])


def test_render_writes_md_csv_json_with_every_row(tmp_path):
    results = [BASE, FAST, SLOW, BROKEN, LATE]
    printed = render(results, "base", tmp_path)
    md = (tmp_path / "table.md").read_text()
    with open(tmp_path / "table.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    as_json = json.loads((tmp_path / "table.json").read_text())

    ids = [r["cell"]["id"] for r in results]
    assert [r["Cell"] for r in records] == ids
    assert [r["Cell"] for r in as_json] == ids
    assert [r["Status"] for r in records] == ["ok", "ok", "ok", "failed", "timeout"]
    assert [r["Settings"] for r in records][:2] == [
        "FP32 / attn_implementation=eager",
        "BF16 / attn_implementation=eager",
    ]
    assert float(records[1]["Speed X"]) == pytest.approx(2.5)
    assert records[3]["Avg Tok/s"] == "" and records[3]["Speed X"] == ""
    assert as_json[1]["Speed X"] == pytest.approx(2.5)
    assert as_json[3]["Speed X"] is None
    assert as_json[3]["Notes"] == "failed: ImportError: FlashAttention2 missing"

    # markdown: the seed's columns, one row per result (in the main table and in the details table)
    header = next(line for line in md.splitlines() if line.startswith("| Software"))
    assert [h.strip() for h in header.strip("|").split("|")] == COLUMNS
    table_rows = [line for line in md.splitlines() if line.startswith("| HF Transformers")]
    assert len(table_rows) == 2 * len(results)
    assert "FP32<br>attn_implementation=eager (baseline)" in md
    assert "100.00 (80.00–120.00)" in md
    assert "failed: ImportError: FlashAttention2 missing" in md
    assert "Model: tiny-mistral (from synthetic; SYNTHETIC random weights" in md
    assert "Hardware: CPU (2 cores)  \nSoftware: torch 2.13.0+cpu, HF Transformers 5.17.0  \n" in md
    # the printed text is the same table for a terminal
    assert sum(line.startswith("| HF Transformers") for line in printed.splitlines()) == len(results)
    assert "FP32; attn_implementation=eager (baseline)" in printed
    fast_line = next(line for line in printed.splitlines() if "BF16; attn_implementation=eager" in line)
    assert "250.00 (240.00–260.00)" in fast_line


def _speed_cells(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("| HF Transformers")][:3]
    column = COLUMNS.index("Speed X")
    return [line.strip("|").split("|")[column].strip() for line in lines]


def test_speed_x_keeps_two_decimals(tmp_path):
    printed = render([BASE, FAST, SLOW], "base", tmp_path)
    assert _speed_cells(printed) == ["1.00", "2.50", "0.50"]
    assert _speed_cells((tmp_path / "table.md").read_text()) == ["1.00", "2.50", "0.50"]


def test_multi_gpu_rows_say_which_gpus():
    """The seed told "4090 only" from "4090+3090" in Notes; a row on several GPUs (or not on GPU 0) says so too."""
    split = ok("split", ["q4_k_m"], [50.0, 50.0, 50.0], 6000.0)
    split["cell"] = {**split["cell"], "gpus": [0, 1]}
    split["memory"] = {"kind": "nvml-device-used", "peak_mib": 6000.0, "devices": []}
    single = ok("single", ["q4_k_m"], [60.0, 60.0, 60.0], 5000.0)
    single["cell"] = {**single["cell"], "gpus": [1]}
    single["memory"] = {"kind": "nvml-device-used", "peak_mib": 5000.0, "devices": []}
    first = ok("first", ["q4_k_m"], [60.0, 60.0, 60.0], 5000.0)
    first["cell"] = {**first["cell"], "gpus": [0]}
    first["memory"] = single["memory"]
    got = by_cell(rows([split, single, first], "single"))
    assert got["split"]["Notes"] == "2 GPUs: 0+1"
    assert got["single"]["Notes"] == "GPU 1"  # the same cell on another card is told apart
    assert got["first"]["Notes"] == ""


def test_memory_that_could_not_be_read_is_no_number_and_says_why():
    blind = ok("blind", ["BF16"], [90.0, 90.0, 90.0], 0.0)
    blind["memory"] = {"kind": "unmeasured", "peak_mib": None, "reason": "NVML unavailable: driver not loaded"}
    frame = rows([BASE, blind], "base")
    got = by_cell(frame)
    assert pd.isna(got["blind"]["Max Mem (MiB)"]) and pd.isna(got["blind"]["Max mem %"])
    assert got["blind"]["Notes"] == "memory not measured: NVML unavailable: driver not loaded"
    shown = display_frame(frame, "; ")
    assert list(shown["Max Mem (MiB)"]) == ["400 RSS", ""]  # CPU memory says so in its own column


def test_gpu_memory_is_shown_as_a_plain_number():
    card = ok("card", ["BF16"], [90.0, 90.0, 90.0], 16000.0)
    card["memory"] = {"kind": "nvml-device-used", "peak_mib": 16000.0, "devices": [{"name": "NVIDIA H200"}]}
    assert list(display_frame(rows([card], "card"), "; ")["Max Mem (MiB)"]) == ["16000"]


def test_a_setting_not_runnable_here_says_so_rather_than_failed():
    missing = failed("nofa", ["BF16", "attn_implementation=flash_attention_2"], "flash-attn not installed here")
    missing["status"] = "unsupported"
    got = by_cell(rows([BASE, missing], "base"))
    assert got["nofa"]["Status"] == "unsupported"
    assert got["nofa"]["Notes"] == "not run here: flash-attn not installed here"
    assert pd.isna(got["nofa"]["Avg Tok/s"]) and pd.isna(got["nofa"]["Max Mem (MiB)"])


def test_the_header_says_when_by_what_and_on_what_and_what_differs_by_row():
    local, docker = ok("local", ["FP32"], [10.0, 10.0, 10.0], 1.0), ok("docker", ["BF16"], [12.0, 12.0, 12.0], 1.0)
    local.update(executor="local", finished_at="2026-12-02T03:10:00+0000")
    docker.update(executor="docker", finished_at="2026-12-02T04:20:00+0000")
    for r in (local, docker):
        r["runner"] = {"version": "0.1.0", "commit": "abc123def456"}
        r["measured_with"] = {"hardware": "CPU: AMD EPYC 7B13, 2 logical cores"}
    docker["environment"] = {**docker["environment"], "engine_version": "5.17.0", "torch": "2.11.0+cpu"}
    local["environment"] = {**local["environment"], "engine_version": "5.24.0"}
    lines = caption([local, docker])
    assert lines[2] == "Measured: 2026-12-02 03:10 to 2026-12-02 04:20, by inference-matrix 0.1.0 (commit abc123def456)"
    assert lines[3] == "Hardware: CPU: AMD EPYC 7B13, 2 logical cores"
    assert lines[4] == (
        "Software: torch differs by row (2.13.0+cpu, 2.11.0+cpu; see Details), executor differs by row "
        "(local, docker; see Details), HF Transformers differs by row (5.24.0, 5.17.0; see Details)"
    )
    details = details_frame(rows([local, docker], "local"), "; ")
    assert list(details["Executor"]) == ["local", "docker"]
    assert list(details["torch"]) == ["2.13.0+cpu", "2.11.0+cpu"]
    assert list(details["Engine version"]) == ["5.24.0", "5.17.0"]
    failed_details = details_frame(rows([BASE, BROKEN], "base"), "; ")
    assert "nan" not in failed_details.to_string() and "None" not in failed_details.to_string()


def test_a_cpu_row_measured_on_a_busy_host_says_so():
    busy, calm = ok("busy", ["FP32"], [10.0, 10.0, 10.0], 1.0), ok("calm", ["BF16"], [10.0, 10.0, 10.0], 1.0)
    busy["host_cpu_busy_before"], calm["host_cpu_busy_before"] = 0.62, 0.05
    got = by_cell(rows([busy, calm], "busy"))
    assert got["busy"]["Notes"].endswith("; host CPU 62% busy just before this cell")
    assert "busy" not in got["calm"]["Notes"]
