"""The roofline column: decode rate against what the measured bandwidth allows for each row's weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from runner import roofline

REPO = Path(__file__).resolve().parents[1]
H200 = "NVIDIA H200; driver 580.159.04"


def record(gb_s: float) -> dict:
    device = {"device": 0, "name": "NVIDIA H200", "copy_gb_s": gb_s, "nominal_gb_s": 4800, "method": "copy"}
    return {"devices": [device], "torch": "2.11.0+cu130"}


def test_committed_h200_rows_get_their_share_of_the_measured_bandwidth(runner_cli, tmp_path):
    folder = tmp_path / "vllm"
    shutil.copytree(REPO / "results" / "h200" / "vllm", folder)
    (folder / roofline.BANDWIDTH_FILE).write_text(json.dumps({H200: record(4000.0)}))
    done = runner_cli("matrix.yaml", "-o", str(folder), "--table-only")
    assert done.returncode == 0, done.stderr
    rows = {r["Cell"]: r for r in json.loads((folder / "table.json").read_text())}
    # vLLM bf16: 205.30 decode tok/s x 14.84 GiB (its log) / 4,000 GB/s
    assert abs(rows["vllm-9f9f543ea0f8"]["Roofline %"] - 100 * 205.3009 * 14.84 * 2**30 / 4000e9) < 0.01
    # the FP32 baseline: parameters x 4 bytes
    base = json.loads((folder / "cells" / "transformers-00eee0f9ada1.json").read_text())
    fp32 = base["metrics"]["decode_tokens_per_s"]["median"] * base["model"]["parameters"] * 4 / 4000e9
    assert abs(rows["transformers-00eee0f9ada1"]["Roofline %"] - 100 * fp32) < 0.01
    table = (folder / "table.md").read_text()
    assert "NVIDIA H200: 4,000 GB/s measured by a device copy, nominal 4,800 GB/s" in table
    details_head = table.split("Details:")[1].strip().splitlines()[0]
    assert "Roofline %" in details_head and "Roofline %" not in table.split("Details:")[0].split("Roofline %")[-1]


def test_no_bandwidth_no_column(runner_cli, tmp_path):
    folder = tmp_path / "vllm"
    shutil.copytree(REPO / "results" / "h200" / "vllm", folder)
    done = runner_cli("matrix.yaml", "-o", str(folder), "--table-only")
    assert done.returncode == 0, done.stderr
    assert "Roofline" not in (folder / "table.md").read_text()


def test_one_probe_per_kind_of_gpu_and_a_failed_probe_never_replaces_a_figure(tmp_path):
    hardware = "GPUs: NVIDIA H200 + NVIDIA H200; driver 580.159.04"
    assert roofline.gpu_kind(hardware) == H200 and roofline.gpu_kind("CPU: x86 (2 cores)") is None
    assert roofline.needs_probe(tmp_path, (0, 1), hardware) and not roofline.needs_probe(tmp_path, (), "CPU: x")
    result = {"cell": {"id": "a", "gpus": [0, 1]}, "measured_with": {"hardware": hardware}, "bandwidth": record(4200.0)}
    roofline.keep(tmp_path, result)
    assert not roofline.needs_probe(tmp_path, (0,), "GPUs: NVIDIA H200; driver 580.159.04")
    roofline.keep(tmp_path, {**result, "bandwidth": {"error": "no CUDA device visible"}})
    assert roofline.load(tmp_path)[H200]["devices"][0]["copy_gb_s"] == 4200.0


def test_the_probe_says_why_where_there_is_no_gpu():
    done = subprocess.run(
        [sys.executable, str(REPO / "entrypoints" / "bandwidth.py")], capture_output=True, text=True, timeout=120
    )
    assert json.loads(done.stdout) == {"error": "no CUDA device visible"}
    sys.path.insert(0, str(REPO / "entrypoints"))
    import bandwidth

    assert bandwidth.nominal("NVIDIA H200") == 4800 and bandwidth.nominal("NVIDIA H100 80GB HBM3") == 3350
    assert bandwidth.nominal("NVIDIA H100 PCIe") == 2000 and bandwidth.nominal("Tesla T4") is None


def test_a_batch_reads_the_weights_once_per_step():
    # decode_tokens_per_s is per sequence: 100 steps/s of 4 sequences read 100 x the weights, not 400 x
    base = {
        "status": "ok",
        "cell": {"id": "t", "engine": "transformers", "gpus": [0], "batch_size": 4},
        "settings": {},
        "model": {"parameters": 1_000_000_000},
        "metrics": {"decode_tokens_per_s": {"median": 100.0}},
        "measured_with": {"hardware": "GPUs: NVIDIA H200; driver 580.159.04"},
    }
    base["cell"]["settings"] = {"dtype": "bf16", "quantization": "none"}
    share = roofline.share_pct(base, {H200: record(4000.0)})
    assert abs(share - 100 * 100.0 * 2e9 / 4000e9) < 1e-9  # 5 %
    two = {**base, "cell": {**base["cell"], "gpus": [0, 1]}}
    assert abs(roofline.share_pct(two, {H200: record(4000.0)}) - share / 2) < 1e-9  # two GPUs' bandwidth


def test_an_mlc_row_reads_its_converted_weights():
    result = {
        "status": "ok",
        "cell": {"id": "m", "engine": "mlc", "gpus": [0], "batch_size": 1, "settings": {"quantization": "q4f16_1"}},
        "engine_details": {"params_bytes": 4_000_000_000},
        "metrics": {"decode_tokens_per_s": {"median": 200.0}},
        "measured_with": {"hardware": "GPUs: NVIDIA H200; driver 580.159.04"},
    }
    assert roofline.share_pct(result, {H200: record(4000.0)}) == 20.0  # 200 x 4 GB / 4,000 GB/s
    assert roofline.share_pct({**result, "engine_details": {}}, {H200: record(4000.0)}) is None
