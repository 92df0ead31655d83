"""What a vLLM AWQ cell does with its checkpoint before loading (entrypoints/run_vllm.py prepare, vllm_awq).

An AWQ export is read as it is; one quantised another way is refused with the
fix; an unquantised one goes to llm-compressor, and without a quantiser the cell
says how to get one. The quantisation itself runs in the vllm image
(tests/test_docker.py), where llm-compressor is installed; the host venv has none.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import harness  # in-container modules, found on the entrypoints path
import run_vllm
import vllm_awq
import vllm_awq_quantise

from runner.engines import ENGINES


def cell_engine(checkpoint: Path, store: Path, quantization: str | None = "awq") -> run_vllm.Engine:
    settings = ENGINES["vllm"].resolve({"quantization": quantization})
    model = {"name": checkpoint.name, "path": str(checkpoint), "fingerprint": "f", "derived_dir": str(store)}
    return run_vllm.Engine({"cell": {"settings": settings, "gpus": []}, "workload": {}, "model": model})


def with_quantisation(folder: Path, method: str | None) -> Path:
    config = json.loads((folder / "config.json").read_text())
    if method:
        config["quantization_config"] = {"quant_method": method, "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def checkpoint(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "real-checkpoint"
    shutil.copytree(tiny_model, folder)
    return folder


def test_awq_export_and_unquantised_cells_load_as_they_are(checkpoint, tmp_path):
    engine = cell_engine(with_quantisation(checkpoint, "awq"), tmp_path / "derived")
    assert engine.prepare() is None and engine.model_path == str(checkpoint) and engine.quantization == "awq"
    plain = cell_engine(checkpoint, tmp_path / "derived", quantization=None)
    assert plain.prepare() is None and plain.quantization is None


def test_checkpoint_quantised_otherwise_is_refused_with_the_fix(checkpoint, tmp_path):
    engine = cell_engine(with_quantisation(checkpoint, "gptq"), tmp_path / "derived")
    with pytest.raises(harness.CellInvalid, match=r"already quantised \(gptq\); set quantization to null"):
        engine.prepare()


def test_without_a_quantiser_the_cell_says_how_to_get_one(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_AWQ_QUANTISER", raising=False)
    with pytest.raises(harness.CellUnsupported, match=r"VLLM_AWQ_QUANTISER is not set: use the vllm image"):
        cell_engine(checkpoint, tmp_path / "derived").prepare()
    monkeypatch.setenv("VLLM_AWQ_QUANTISER", sys.executable)  # a real Python, without llm-compressor
    with pytest.raises(harness.CellUnsupported, match=r"has no llm-compressor \(.*PackageNotFoundError"):
        cell_engine(checkpoint, tmp_path / "derived").prepare()
    assert not (tmp_path / "derived").exists()  # nothing half-made in the store


def test_cache_key_follows_checkpoint_release_and_recipe():
    key = vllm_awq.cache_key("fingerprint-a", "0.14.0.1")
    assert key == vllm_awq.cache_key("fingerprint-a", "0.14.0.1")
    assert key != vllm_awq.cache_key("fingerprint-b", "0.14.0.1")
    assert key != vllm_awq.cache_key("fingerprint-a", "0.13.0")


def test_calibration_windows_and_group_size():
    ids = list(range(10))
    assert vllm_awq_quantise.calibration_windows(ids, samples=8, tokens=4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert vllm_awq_quantise.calibration_windows(ids[:3], samples=8, tokens=4) == [[0, 1, 2]]  # short text: one
    assert vllm_awq_quantise.calibration_windows(ids, samples=1, tokens=4) == [[0, 1, 2, 3]]
    assert vllm_awq_quantise.group_size_for({4096, 14336}) == 128  # shisa-7b / Mistral-7B
    assert vllm_awq_quantise.group_size_for({64, 128}) == 64  # tiny-mistral
    with pytest.raises(SystemExit, match="no AWQ group size"):
        vllm_awq_quantise.group_size_for({48})
    assert vllm_awq.CALIBRATION.stat().st_size > 64 * 1024  # shipped: enough text for the default samples
