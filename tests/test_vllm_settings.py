"""The vLLM engine description without vLLM: labels in the seed's words, parallelism against the
cell's GPUs, engine_args that collide with settings, and the entrypoint's did-you-mean for
engine_args (checked in the cell against the pinned vLLM's EngineArgs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.engines import ENGINES
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import harness  # in-container modules, found on the entrypoints path
import run_vllm  # in-container module, found on the entrypoints path; vLLM itself is not needed here

ENGINE = ENGINES["vllm"]


def settings(**overrides):
    return ENGINE.resolve(overrides)


def test_labels_use_the_seed_words():
    assert ENGINE.label(settings()) == ["tensor_parallel_size=1"]
    assert ENGINE.label(settings(tensor_parallel_size=2, quantization="awq")) == [
        "tensor_parallel_size=2",
        "quantization='awq'",
    ]
    assert ENGINE.label(settings(pipeline_parallel_size=2, enforce_eager=True, engine_args={"block_size": 32})) == [
        "tensor_parallel_size=1",
        "pipeline_parallel_size=2",
        "enforce_eager=True",
        "block_size=32",
    ]


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        ({"tensor_parallel_size": 2}, (0,), "tensor_parallel_size x pipeline_parallel_size = 2 but the cell has 1"),
        ({"pipeline_parallel_size": 2}, (), "a CPU cell (gpus: []) runs one vLLM worker"),
        ({}, (0, 1), "= 1 but the cell has 2 GPU(s) [0, 1]"),
        ({"gpu_memory_utilization": 1.5}, (0,), "gpu_memory_utilization must be in (0, 1]"),
        ({"engine_args": {"dtype": "half"}}, (0,), "engine_args.dtype is set by the cell itself"),
        ({"engine_args": {"model": "x"}}, (0,), "engine_args.model is set by the cell itself"),
    ],
)
def test_check_rejects_inconsistent_cells(overrides, gpus, expected):
    assert expected in ENGINE.check(settings(**overrides), gpus)


def test_two_gpu_cells_are_valid():
    assert ENGINE.check(settings(tensor_parallel_size=2), (0, 1)) is None
    assert ENGINE.check(settings(pipeline_parallel_size=2), (2, 3)) is None
    assert ENGINE.check(settings(), ()) is None


def test_matrix_with_a_tp2_cell_on_one_gpu_is_one_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\nworkload: {prompt_tokens: 8, new_tokens: 8}\n"
        "defaults: {gpus: [0]}\nengines:\n  vllm:\n    axes: {tensor_parallel_size: [1, 2]}\n"
    )
    with pytest.raises(UserError) as caught:
        expand(load_matrix(path))
    assert str(caught.value).startswith(f"{path}: engines.vllm: cell {{'tensor_parallel_size': 2}}: ")
    assert "\n" not in str(caught.value)


def test_unknown_engine_args_get_a_did_you_mean():
    known = {"block_size", "enable_prefix_caching", "max_num_seqs"}
    assert run_vllm.unknown_engine_args(["block_size"], known, "0.24.0") is None
    assert run_vllm.unknown_engine_args(["enable_prefix_cache"], known, "0.24.0") == (
        "engine_args.enable_prefix_cache is not an argument of vLLM 0.24.0's EngineArgs; "
        "did you mean 'enable_prefix_caching'?"
    )


def test_context_defaults_to_the_workload_rounded_up():
    workload = {"prompt_tokens": 64, "new_tokens": 256}
    assert harness.context_length(settings()["max_model_len"], workload) == 512
    assert harness.context_length(settings(max_model_len=4096)["max_model_len"], workload) == 4096


def test_multi_gpu_cells_keep_flashinfer_allreduce_fusion_off():
    assert run_vllm.with_multi_gpu_safety({"block_size": 32}, 1) == {"block_size": 32}
    two = run_vllm.with_multi_gpu_safety({"compilation_config": {"pass_config": {"fuse_norm_quant": True}}}, 2)
    assert two == {"compilation_config": {"pass_config": {"fuse_norm_quant": True, "fuse_allreduce_rms": False}}}


def test_cpu_cells_size_their_kv_cache_to_the_workload():
    """shisa-7b: 32 layers x 8 KV heads x 128 wide = 128 KiB a token at fp32 per K and V; twice over for headroom."""
    shisa = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    assert run_vllm.cpu_kv_cache_bytes(shisa, context=512, batch_size=8) == 2 * 2 * 32 * 8 * 128 * 4 * 512 * 8
    tiny = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    assert run_vllm.cpu_kv_cache_bytes(tiny, context=256, batch_size=1) == 256 << 20  # the floor
