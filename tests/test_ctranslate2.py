"""CTranslate2: settings and what it lacks, its image's CUDA pairing, conversion once per type, and cells for real.

The slow tests run CTranslate2 4.8.5 (the pinned CPU wheel, in the dev venv) on the tiny model:
its own converter, the cell through ``python -m runner`` with the local executor, the plain
script beside each row, and the converted model's logits against transformers' on the same
checkpoint. tests/test_docker.py runs the same rows in the ctranslate2 CPU image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from runner.engines.ctranslate2 import CTRANSLATE2
from runner.errors import UserError
from runner.images import load_specs
from runner.matrix import load_matrix
from runner.models.fingerprint import fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import ctranslate2_convert
import run_ctranslate2


def settings(**overrides):
    return CTRANSLATE2.resolve(overrides)


def test_labels_name_the_compute_type_and_what_differs():
    assert CTRANSLATE2.label(settings()) == ["float16"]
    assert CTRANSLATE2.label(settings(compute_type="int8_bfloat16", flash_attention=True)) == [
        "int8_bfloat16",
        "flash_attention=True",
    ]
    assert CTRANSLATE2.label(settings(compute_type="int8", intra_threads=1)) == ["int8", "intra_threads=1"]


@pytest.mark.parametrize(
    ("overrides", "gpus", "problem"),
    [
        ({}, (0, 1), "runs a cell on one GPU here"),
        ({"flash_attention": True}, (), "a CPU cell cannot use it"),
        ({"intra_threads": 0}, (), "intra_threads must be at least 1"),
        ({"max_batch_size": -1}, (0,), "max_batch_size must be 0"),
    ],
)
def test_check_refuses_impossible_cells(overrides, gpus, problem):
    assert problem in CTRANSLATE2.check(settings(**overrides), gpus)


def write_matrix(tmp_path: Path, settings_yaml: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\n"
        f"engines:\n  ctranslate2:\n    include:\n      - {settings_yaml}\n"
    )
    return path


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("{cache: q8}", "CTranslate2 has no cache: its KV cache is kept in the compute type"),
        ("{n_ctx: 4096}", "CTranslate2 has no n_ctx: its KV cache grows with the sequence"),
        ("{cuda_graphs: true}", "CTranslate2 has no cuda_graphs: it has no CUDA graph capture"),
        ("{flash_attn: true}", "CTranslate2 has no flash_attn: its switch is called flash_attention"),
        ("{compute_typ: int8}", "unknown key; did you mean 'compute_type'?"),
        ("{compute_type: int4}", "'int4' is not one of"),
    ],
)
def test_what_it_lacks_is_said_at_validation(tmp_path, given, message):
    path = write_matrix(tmp_path, given)
    with pytest.raises(UserError) as caught:
        load_matrix(path)
    assert str(caught.value).startswith(f"{path}: engines.ctranslate2.include[0].")
    assert message in str(caught.value)


def test_matrix_yaml_has_the_gpu_compute_types(repo):
    cells = load_matrix(repo / "matrix.yaml").engines["ctranslate2"]
    assert cells.axes == {"compute_type": ["float16", "bfloat16", "int8_float16", "int8_bfloat16"]}


def test_gpu_image_pairs_ctranslate2_with_cuda_12_cublas():
    """CTranslate2 4.8.5's wheels load libcublas.so.12: the GPU flavour's base must be a CUDA 12 image."""
    spec = load_specs()[("ctranslate2", "gpu")]
    assert "ctranslate2==4.8.5" in spec.requirements
    assert spec.base_image.startswith("nvidia/cuda:12.") and "runtime" in spec.base_image


def test_converted_models_are_keyed_by_checkpoint_release_and_this_code(tmp_path, tiny_model):
    key = ctranslate2_convert.cache_key("fingerprint-a", "4.8.5")
    assert key == ctranslate2_convert.cache_key("fingerprint-a", "4.8.5")
    assert key != ctranslate2_convert.cache_key("fingerprint-b", "4.8.5")
    assert key != ctranslate2_convert.cache_key("fingerprint-a", "4.8.4")
    command = ctranslate2_convert.converter_command(tiny_model, tmp_path / "out", "int8")
    assert command[1:3] == ["-m", "ctranslate2.converters.transformers"]
    assert command[command.index("--quantization") + 1] == "int8"
    copied = command[command.index("--copy_files") + 1 :]
    assert "tokenizer.json" in copied and all((tiny_model / name).is_file() for name in copied)


def test_a_gpu_load_without_cuda_12_cublas_says_how_to_get_it():
    # the message CTranslate2 4.8.5 builds when it cannot dlopen a library ("Library " {} " is not found or
    # cannot be loaded"): seen on an H200 without cuBLAS 12 (2026-12-02), raised at the first generation,
    # not at load, which is why generate() checks for it too
    seen = RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")
    problem = run_ctranslate2.missing_cuda_library(seen)
    assert "needs CUDA 12's cuBLAS at run time (Library libcublas.so.12 is not found" in problem
    assert problem.endswith("put the lib folder of the nvidia-cublas-cu12 wheel on LD_LIBRARY_PATH")
    assert run_ctranslate2.missing_cuda_library(RuntimeError("CUDA out of memory")) is None


def test_the_drivers_compute_cache_is_measured_where_the_cell_points_it(tmp_path, monkeypatch):
    cache = tmp_path / "cuda-cache"
    monkeypatch.setenv("CUDA_CACHE_PATH", str(cache))
    assert run_ctranslate2.compute_cache_bytes() == 0  # set, not made yet: nothing compiled
    (cache / "ComputeCache" / "a").mkdir(parents=True)
    (cache / "ComputeCache" / "a" / "entry").write_bytes(b"x" * 300)
    (cache / "ComputeCache" / "index").write_bytes(b"y" * 45)
    assert run_ctranslate2.compute_cache_bytes() == 345
    monkeypatch.delenv("CUDA_CACHE_PATH")
    assert run_ctranslate2.compute_cache_bytes() is None


def model_record(folder: Path) -> dict:
    return {"name": folder.name, "path": str(folder), "fingerprint": fingerprint(folder)}


@pytest.mark.slow
def test_conversion_runs_once_per_type_and_keeps_transformers_logits(tmp_path, tiny_model):
    import ctranslate2
    import torch
    from transformers import AutoModelForCausalLM

    model = model_record(tiny_model)
    path, first = ctranslate2_convert.model_for(model, "float32", tmp_path / "derived")
    again, second = ctranslate2_convert.model_for(model, "float32", tmp_path / "derived")
    assert again == path and path.parent == tmp_path / "derived" / "ctranslate2"
    assert first["cache_hit"] is False and second["cache_hit"] is True and second["seconds"] is None
    assert first["converted_by"]["quantization"] == "float32" and first["converted_by"]["ctranslate2"] == "4.8.5"
    assert (path / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    int8, _ = ctranslate2_convert.model_for(model, "int8", tmp_path / "derived")
    assert int8 != path and (int8 / "model.bin").stat().st_size < (path / "model.bin").stat().st_size / 2

    # the converted float32 model computes what transformers computes on the same checkpoint
    ids = [1, 1385, 3995, 3810, 853, 4019, 560, 295]
    vocab = json.loads((path / "vocabulary.json").read_text())
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type="float32")
    ours = np.asarray(generator.forward_batch([[vocab[i] for i in ids]]))  # a CPU StorageView is an array
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits.numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-3)


@pytest.mark.slow
def test_cpu_cells_run_for_real_and_reuse_the_conversion(runner_cli, tmp_path):
    runs = []
    for name in ("first", "second"):  # two run folders, one store: the second converts nothing
        folder = tmp_path / name
        done = runner_cli(
            "matrix-cpu.yaml", "--executor", "local", "--only", "ctranslate2", "-o", str(folder),
            "--store", str(tmp_path / "store"), timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.rstrip().endswith("this run: 2 ok, 1 not run here, 0 failed")
        runs.append({p.stem: json.loads(p.read_text()) for p in (folder / "cells").glob("*.json")})
    for cells in runs:
        by_type = {r["cell"]["settings"]["compute_type"]: r for r in cells.values()}
        assert by_type["float16"]["status"] == "unsupported"
        assert "cannot compute in float16 on this cpu" in by_type["float16"]["reason"]
        for compute_type in ("float32", "int8"):
            result = by_type[compute_type]
            assert result["status"] == "ok", result.get("reason")
            assert result["metrics"]["tokens_per_s"]["median"] > 0 and result["metrics"]["ttft_s"]["median"] > 0
            assert result["memory"]["kind"] == "process-tree-peak-rss"
            assert result["environment"]["engine_version"] == "4.8.5"
            assert result["threads"]["compute_from"].startswith("CTranslate2 intra_threads")
            assert result["engine_details"]["compute_type"].startswith(compute_type)
            reference = result["reference"]
            assert reference["tokens_per_s"] > 0 and reference["batch_tokens_per_s"] > 0, reference
            assert reference["raw"]["generate_tokens"]["values"] and reference["ratio"] > 0
    first, second = ({r["cell"]["settings"]["compute_type"]: r["prepare"] for r in c.values() if r.get("prepare")}
                     for c in runs)  # fmt: skip
    assert all(p["cache_hit"] is False for p in first.values()) and all(p["cache_hit"] for p in second.values())
    assert {t: p["ctranslate2_model"] for t, p in first.items()} == {
        t: p["ctranslate2_model"] for t, p in second.items()
    }
