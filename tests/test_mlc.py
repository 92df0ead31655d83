"""MLC LLM: settings and labels, the store layout of its builds, the mlc_llm command lines, and cells for real on CPU.

The slow tests run mlc-llm's Python source at the pinned commit on apache-tvm 0.27 from PyPI
(`make setup-mlc`, or MLC_LLM_SOURCE) on the tiny model: mlc_llm converts, configures and
compiles it for LLVM in the cell, and the cell drives the library through TVM's Relax VM with
MLC's paged KV cache. Where no mlc-llm source is here (CI: its git host is unreachable), they
skip saying so; the rest runs everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.engines import ENGINES
from runner.engines.mlc import DEFAULT_OPT, MLC
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix
from runner.models import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import harness
import mlc_build
import run_mlc

MATRIX = "tests/fixtures/matrices/mlc_cpu.yaml"


def settings(**overrides):
    return MLC.resolve(overrides)


def test_labels_name_the_quantisation_and_what_differs():
    assert ENGINES["mlc"] is MLC
    assert MLC.label(settings()) == ["q4f16_1"]
    assert MLC.label(settings(quantization="q0f16", opt="O0", page_size=32, context_window_size=1024)) == [
        "q0f16",
        "opt=O0",
        "context_window_size=1024",
        "page_size=32",
    ]


@pytest.mark.parametrize(
    ("overrides", "gpus", "problem"),
    [
        ({"context_window_size": 0}, (0,), "context_window_size must be at least 1"),
        ({"prefill_chunk_size": -1}, (0,), "prefill_chunk_size must be at least 1"),
        ({"page_size": 0}, (0,), "page_size must be at least 1"),
        ({}, (0, 1), "one GPU"),
    ],
)
def test_check_refuses_impossible_cells(overrides, gpus, problem):
    assert problem in MLC.check(settings(**overrides), gpus)


def test_matrix_yaml_keeps_every_seed_row_and_names_a_typo(repo, tmp_path):
    cells = [c for c in expand(load_matrix(repo / "matrix.yaml")) if c.engine == "mlc"]
    assert [c.label[0] for c in cells] == ["q0f16", "q8f16_1", "q4f16_1", "autogptq_llama_q4f16_1"]
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\nworkload: {prompt_tokens: 8, new_tokens: 8}\n"
        "engines:\n  mlc:\n    include: [{quantisation: q4f16_1}]\n"
    )
    with pytest.raises(UserError, match=r"did you mean 'quantization'"):
        load_matrix(bad)
    bad.write_text(bad.read_text().replace("quantisation: q4f16_1", "quantization: q4f16"))
    with pytest.raises(UserError, match=r"'q4f16' is not one of"):
        load_matrix(bad)


def test_builds_are_kept_per_checkpoint_release_quantisation_config_and_target(tmp_path):
    model = {"name": "shisa-7b-v1", "path": "/m/shisa", "fingerprint": "abc"}
    build = mlc_build.MlcBuild(model, tmp_path, ("source-1", "0.27.0.post1"), env={})
    assert build.folder.parent == tmp_path / "mlc" and build.folder.name.startswith("shisa-7b-v1-")
    assert build.params("q4f16_1") == build.folder / "q4f16_1" / "params"
    config = build.config("q4f16_1", 512, 64)
    assert config == build.folder / "q4f16_1" / "config-c512-p64"
    cuda = build.library(config, json.dumps({"kind": "cuda", "arch": "sm_90"}), DEFAULT_OPT)
    assert cuda.parent == config and cuda.name.startswith("lib-cuda-sm_90-") and cuda.suffix == ".so"
    assert build.library(config, "llvm", DEFAULT_OPT).name.startswith("lib-llvm-")
    assert build.library(config, "llvm", "O0") != build.library(config, "llvm", DEFAULT_OPT)
    for other in (("source-2", "0.27.0.post1"), ("source-1", "0.28.0")):
        assert mlc_build.MlcBuild(model, tmp_path, other, env={}).folder != build.folder
    assert mlc_build.MlcBuild({**model, "fingerprint": "abd"}, tmp_path, ("source-1", "0.27.0.post1"), {}).folder != (
        build.folder
    )


def test_mlc_llm_command_lines_spell_out_each_step():
    convert = mlc_build.convert_command(Path("/src"), "q4f16_1", "cuda", Path("/p"))
    assert convert[1:] == ["-m", "mlc_llm", "convert_weight", "/src", "--quantization", "q4f16_1",
                           "--device", "cuda", "-o", "/p"]  # fmt: skip
    config = mlc_build.config_command(Path("/src"), "q4f16_1", 512, 64, Path("/c"))
    pairs = dict(zip(config[5::2], config[6::2], strict=True))
    assert config[3:5] == ["gen_config", "/src"]
    assert pairs == {"--quantization": "q4f16_1", "--conv-template": "LM", "--context-window-size": "512",
                     "--prefill-chunk-size": "64", "--max-batch-size": "1", "-o": "/c"}  # fmt: skip
    compiled = mlc_build.compile_command(Path("/c"), "llvm", "O0", Path("/c/lib.so"))
    assert compiled[3:] == ["compile", "/c/mlc-chat-config.json", "--device", "llvm", "--opt", "O0", "-o", "/c/lib.so"]


def test_overlay_environment_puts_the_overlay_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = mlc_build.overlay_environment(Path("/o"), "/mlc-llm")
    assert env["PYTHONPATH"].split(":") == ["/o", "/elsewhere"] and env["MLC_LLM_SOURCE"] == "/mlc-llm"


def test_without_mlc_llm_a_cell_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("MLC_LLM_SOURCE", raising=False)
    monkeypatch.setattr(run_mlc.sys, "prefix", str(tmp_path))  # no .venv/mlc-llm there
    if run_mlc.importlib.util.find_spec("mlc_llm") is not None:
        pytest.skip("mlc_llm is installed here")
    with pytest.raises(harness.CellUnsupported, match=r"make setup-mlc"):
        run_mlc.find_route()
    monkeypatch.setenv("MLC_LLM_SOURCE", str(tmp_path))
    with pytest.raises(harness.CellUnsupported, match=r"holds no mlc_llm package"):
        run_mlc.find_route()


def test_source_id_follows_the_python_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    first = run_mlc.source_id(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert run_mlc.source_id(tmp_path) != first


def test_notes_name_the_route_and_the_build():
    result = {
        "engine_details": {"route": "mlc-llm source (source-1) on apache-tvm 0.27.0.post1"},
        "prepare": {"built": [{"step": "convert_weight", "seconds": 7.2}, {"step": "compile", "seconds": 33.2}]},
    }
    assert MLC.notes(result) == [
        "mlc-llm source (source-1) on apache-tvm 0.27.0.post1",
        "built now: convert_weight 7.2 s, compile 33.2 s",
    ]
    assert MLC.notes({"prepare": {"cache_hit": True, "built": []}}) == ["library and weights from the store"]
    beside = {"mlc_llm_bench": "needs MLCEngine (libmlc_llm.so, MLC's C++ engine), absent on this route"}
    assert MLC.notes({"prepare": {"cache_hit": True}, "reference": beside})[-1] == (
        "mlc_llm bench not run: needs MLCEngine (libmlc_llm.so, MLC's C++ engine), absent on this route"
    )
    fell_back = [
        {
            "step": "convert_weight",
            "device": "cuda",
            "seconds": 9.5,
            "failed": "mlc_llm convert_weight failed (exit 1)",
        },
        {"step": "convert_weight", "device": "cpu", "seconds": 20.1},
    ]
    assert MLC.notes({"prepare": {"built": fell_back}}) == [
        "built now: convert_weight on cuda failed after 9.5 s (mlc_llm convert_weight failed (exit 1)), "
        "convert_weight on cpu 20.1 s"
    ]


# -- for real, on CPU -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlc_source() -> str:
    named = run_mlc.named_source() if run_mlc.tvm is not None else None
    if run_mlc.tvm is None:
        pytest.skip(f"apache-tvm is not importable here ({run_mlc.IMPORT_PROBLEM}): make setup-mlc")
    if not named:
        pytest.skip("no mlc-llm source here (make setup-mlc needs its git host; or set MLC_LLM_SOURCE)")
    return named


@pytest.fixture(scope="module")
def runs(mlc_source, runner_cli, tmp_path_factory):
    """A fresh store (so the first run builds), then the same matrix into a second folder."""
    store = tmp_path_factory.mktemp("store")
    synthetic.materialise("tiny-mistral", store, log=lambda message: None)
    folders = [tmp_path_factory.mktemp("mlc") / name for name in ("first", "second")]
    for folder in folders:
        done = runner_cli(MATRIX, "--executor", "local", "-o", str(folder), "--store", str(store), timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.rstrip().endswith("this run: 2 ok, 1 not run here, 0 failed"), done.stdout[-2000:]
    return {"store": store, "first": folders[0], "second": folders[1]}


def cells(folder: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    return {doc["cell"]["settings"]["quantization"]: doc for doc in docs}


@pytest.mark.slow
def test_cells_build_once_and_run_exactly_n_tokens(runs):
    first, second = cells(runs["first"]), cells(runs["second"])
    for quantization in ("q4f32_1", "q4f16_1"):
        doc = first[quantization]
        assert doc["status"] == "ok", doc.get("reason")
        metrics, details = doc["metrics"], doc["engine_details"]
        assert len(metrics["tokens_per_s"]["values"]) == 2
        assert 0 < metrics["ttft_s"]["median"] < metrics["generation_s"]["median"]
        assert "through entrypoints/mlc_overlay" in details["route"] and details["target"] == "llvm"
        assert len(details["generated"]) == 16 and details["kv_cache"]["page_size"] == 16
        assert [step["step"] for step in doc["prepare"]["built"]] == ["convert_weight", "gen_config", "compile"]
        assert Path(doc["prepare"]["library"]).is_file()
        again = second[quantization]
        assert again["status"] == "ok" and again["prepare"]["cache_hit"] and again["prepare"]["built"] == []
        assert again["engine_details"]["generated"] == details["generated"]  # the same library, greedy
        assert doc["threads"]["compute"] == len(harness.cell_cpus())
        # beside the row: the same library's decode back to back (mlc_llm bench needs MLCEngine)
        reference = doc["reference"]
        assert reference["tool"] == "same library without host sampling", reference
        assert reference["steps"] == doc["workload"]["new_tokens"] - 1
        assert 0 < reference["host_enqueue_s"] <= reference["seconds"]
        assert reference["decode_tokens_per_s"] == pytest.approx(reference["steps"] / reference["seconds"])
        assert reference["decode_ratio"] == pytest.approx(
            metrics["decode_tokens_per_s"]["median"] / reference["decode_tokens_per_s"]
        )
        assert reference["mlc_llm_bench"].startswith("needs MLCEngine")
    # mlc_llm read the checkpoint through a view: the store's checkpoint is as it was built
    checkpoint = Path(first["q4f32_1"]["model"]["path"])
    assert not (checkpoint / "model.safetensors.index.json").exists()
    assert first["q4f32_1"]["model"]["fingerprint"] == second["q4f32_1"]["model"]["fingerprint"]
    retired = first["q8f16_1"]
    assert retired["status"] == "unsupported"
    assert (
        retired["reason"].startswith("q8f16_1 is not a quantisation of this mlc_llm") and "q4f16_1" in retired["reason"]
    )


@pytest.mark.slow
def test_a_gpu_cells_conversion_falls_back_to_the_cpu(mlc_source, tmp_path):
    """A GPU cell converts on its GPU first (seconds; the 7B q4f16_1 took 8 min on an H200 host's CPU), else on the
    CPU. Here, with no CUDA device, mlc_llm's conversion on cuda fails for real and the CPU one makes the weights;
    both tries are recorded, and the weights are reused after."""
    checkpoint = synthetic.materialise("tiny-mistral", tmp_path / "store", log=lambda message: None)
    model = {"name": "tiny-mistral", "path": str(checkpoint), "fingerprint": "tiny"}
    env = mlc_build.overlay_environment(run_mlc.OVERLAY, mlc_source)
    build = mlc_build.MlcBuild(model, tmp_path / "derived", ("source", run_mlc.tvm.__version__), env)
    params = build.convert("q4f16_1", ("cuda", "cpu"))
    assert (params / mlc_build.PARAMS_MARKER).is_file() and list(params.glob("*.bin"))
    failed, converted = build.built
    assert failed["step"] == "convert_weight" and failed["device"] == "cuda" and failed["seconds"] > 0
    # mlc_llm's own refusal: it finds no CUDA device here
    assert "convert_weight failed (exit 2): argument --device: invalid detect_device value: 'cuda'" in failed["failed"]
    assert converted["step"] == "convert_weight" and converted["device"] == "cpu" and "failed" not in converted
    assert (params.parent / "convert-cuda.log").is_file() and (params.parent / "convert-cpu.log").is_file()
    again = mlc_build.MlcBuild(model, tmp_path / "derived", ("source", run_mlc.tvm.__version__), env)
    assert again.convert("q4f16_1", ("cuda", "cpu")) == params and again.built == []


@pytest.mark.slow
def test_the_compiled_model_greedy_tokens_agree_with_transformers(runs):
    """q4f32_1 keeps activations in float32: its first greedy token is transformers' float32 one."""
    doc = cells(runs["first"])["q4f32_1"]
    spec = json.loads((runs["first"] / "spec" / f"{doc['cell']['id']}.json").read_text())
    script = (
        "import json, sys, torch, harness, run_mlc\n"
        "from transformers import AutoModelForCausalLM\n"
        "spec = json.loads(sys.argv[1]); engine = run_mlc.Engine(spec)\n"
        "ids = harness.prompt_ids(engine, spec['workload']['prompt_tokens'], 1)[0]\n"
        "model = AutoModelForCausalLM.from_pretrained(spec['model']['path'], dtype=torch.float32)\n"
        "print(json.dumps(int(model(torch.tensor([ids])).logits[0, -1].argmax())))\n"
    )
    entrypoints = str(Path(run_mlc.__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)], capture_output=True, text=True, cwd=entrypoints,
        env={**os.environ, "PYTHONPATH": entrypoints}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == doc["engine_details"]["generated"][0]


@pytest.mark.slow
def test_the_model_compiles_for_an_h200_here(runs, tmp_path):
    """mlc_llm's compile for CUDA sm_90, the H200 cell's target, on this CPU machine: the GPU-only passes (Dlight's
    GEMV specialisation, LiftTIRGlobalBufferAlloc, the sampler's call_tir) run against TVM 0.27 through the
    overlay's shims (without them they stopped with buffer_map, PointerType, stmt_functor and call_tir argument
    errors). Without a CUDA driver TVM keeps the kernels as CUDA source in the library (compiled when loaded);
    on the GPU mlc_llm's hook compiles them with nvcc into an sm_90 fatbin."""
    doc = cells(runs["first"])["q4f16_1"]
    config = Path(doc["prepare"]["library"]).parent  # the config folder the library sits in
    target = json.dumps({"kind": "cuda", "arch": "sm_90"})
    library = tmp_path / "lib-cuda.so"
    env = mlc_build.overlay_environment(run_mlc.OVERLAY, run_mlc.named_source())
    done = subprocess.run(
        mlc_build.compile_command(config, target, DEFAULT_OPT, library), capture_output=True, text=True, env=env,
        stdin=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert library.stat().st_size > 100_000
    assert b"__global__" in library.read_bytes() or b"sm_90" in library.read_bytes()  # CUDA source, or a fatbin


TENSOR_CORE_MATMUL = """
import tvm
from tvm import te, tirx
from tvm.s_tir import dlight as dl
n = tirx.Var("n", "int32")  # the prefill length, as in the model's matmuls
A = te.placeholder((1, n, 4096), "float16", name="A")
B = te.placeholder((4096, 4096), "float16", name="B")
k = te.reduce_axis((0, 4096), name="k")
C = te.compute((1, n, 4096), lambda b, i, j: te.sum(A[b, i, k] * B[j, k], axis=k), name="matmul")
with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
    mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul())(tvm.IRModule({"mm": te.create_prim_func([A, B, C])}))
print(mod.script())
"""


def test_tensor_core_matmul_schedules_for_an_h200():
    """dlight's tensor-core (WMMA) schedule, which a 7B model's prefill matmuls take on sm_90 (the tiny model's are
    under its size threshold, so its compile never reached it): apache-tvm 0.27.0.post1 segfaulted in Tensorize with
    apache-tvm-ffi 0.1.15.x (on the H200, 2026-12-03, and here alike), not with 0.1.14.post1, the pin."""
    if run_mlc.tvm is None:
        pytest.skip(f"apache-tvm is not importable here ({run_mlc.IMPORT_PROBLEM}): make setup-mlc")
    done = subprocess.run(
        [sys.executable, "-c", TENSOR_CORE_MATMUL], capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tvm_mma_sync" in done.stdout and "wmma.matrix_a" in done.stdout


def test_no_cuda_device_says_why_tvm_has_none():
    """TVM swallows a failed load of its CUDA runtime; the cell's reason says what the loader said (here, a CPU
    machine: no libcuda.so.1)."""
    if run_mlc.tvm is None:
        pytest.skip(f"apache-tvm is not importable here ({run_mlc.IMPORT_PROBLEM}): make setup-mlc")
    why = run_mlc.cuda_runtime_problem()
    assert why.startswith("libtvm_runtime_cuda.so does not load: ") and ".so" in why.split(": ", 1)[1], why


def test_cuda_runtime_is_found_inside_site_packages(tmp_path):
    """A pip environment's libcudart.so.13 lies in site-packages (nvidia/cu13/lib), off the loader's path: the
    cell finds it there (before a CUDA toolkit's) and loads it by its full path before TVM looks for it."""
    site_lib = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    toolkit_lib = tmp_path / "cuda" / "targets" / "x86_64-linux" / "lib"
    for folder in (site_lib, toolkit_lib):
        folder.mkdir(parents=True)
        (folder / run_mlc.CUDA_RUNTIME).write_bytes(b"")
    found = run_mlc.cuda_runtime_files([str(tmp_path / "empty"), str(tmp_path / "site")], str(tmp_path / "cuda"))
    assert found == [str(site_lib / run_mlc.CUDA_RUNTIME), str(toolkit_lib / run_mlc.CUDA_RUNTIME)]
    assert run_mlc.cuda_runtime_files([str(tmp_path / "empty")], str(tmp_path / "none")) == []
