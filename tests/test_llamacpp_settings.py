"""The llama.cpp engine description and llama-bench helpers, without llama.cpp: settings checks,
labels, one-line matrix errors, the llama-bench command and how its figures sit beside a cell's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.engines import ENGINES
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import llamacpp_bench  # in-container module, found on the entrypoints path

ENGINE = ENGINES["llamacpp"]
WORKLOAD = {"prompt_tokens": 64, "new_tokens": 256, "batch_size": 1, "warmup": 1, "repetitions": 3}


def settings(**overrides):
    return ENGINE.resolve(overrides)


def test_defaults_offload_everything_at_fp16():
    s = settings()
    assert (s["quant"], s["n_gpu_layers"], s["n_ctx"], s["flash_attn"], s["split_mode"]) == (
        "f16",
        -1,
        None,
        False,
        "layer",
    )
    assert ENGINE.check(s, (0,)) is None
    assert ENGINE.label(s) == ["fp16"]


def test_labels_name_what_differs_from_the_defaults():
    s = settings(quant="q4_k_m", flash_attn=True, tensor_split=[3, 1], n_ctx=2048)
    assert ENGINE.label(s) == ["q4_k_m", "flash_attn=True", "n_ctx=2048", "tensor_split=3/1"]


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        ({"tensor_split": [1, 1]}, (0,), "tensor_split has 2 shares but the cell has 1 GPU(s) [0]"),
        ({"tensor_split": [1, "a"]}, (0, 1), "tensor_split must be a list of non-negative numbers"),
        ({"tensor_split": [0, 0]}, (0, 1), "tensor_split gives every GPU a share of 0"),
        ({"main_gpu": 1}, (3,), "main_gpu 1 is not an index into the cell's 1 GPU(s)"),
        ({"n_ubatch": 1024}, (0,), "n_ubatch (1024) cannot exceed n_batch (512)"),
        ({"n_gpu_layers": -2}, (0,), "n_gpu_layers must be -1 (all) or a layer count"),
        ({"n_ctx": 0}, (0,), "n_ctx must be at least 1"),
    ],
)
def test_check_rejects_inconsistent_cells(overrides, gpus, expected):
    assert expected in ENGINE.check(settings(**overrides), gpus)


def test_two_gpu_split_is_a_valid_cell():
    assert ENGINE.check(settings(tensor_split=[3, 1], main_gpu=1, split_mode="row"), (0, 1)) is None


def write_matrix(tmp_path: Path, engine_block: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 8}\ndefaults: {gpus: [0]}\n"
        f"engines:\n  llamacpp:\n{engine_block}"
    )
    return path


def test_matrix_error_names_file_key_and_choices(tmp_path):
    path = write_matrix(tmp_path, "    axes: {quant: [q4_k_s]}\n")
    with pytest.raises(UserError) as caught:
        load_matrix(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: engines.llamacpp.axes.quant")
    assert "'q4_k_m'" in message


def test_split_over_more_gpus_than_the_cell_has_is_one_line(tmp_path):
    path = write_matrix(tmp_path, "    include: [{quant: q8_0, tensor_split: [1, 1]}]\n")
    with pytest.raises(UserError) as caught:
        expand(load_matrix(path))
    assert str(caught.value) == (
        f"{path}: engines.llamacpp: cell {{'quant': 'q8_0', 'tensor_split': [1, 1]}}: "
        "tensor_split has 2 shares but the cell has 1 GPU(s) [0]"
    )


def test_split_cells_expand_with_their_gpus(tmp_path):
    path = write_matrix(
        tmp_path, "    include: [{quant: q4_k_m}, {quant: q4_k_m, gpus: [0, 1], tensor_split: [1, 1]}]\n"
    )
    cells = expand(load_matrix(path))
    assert [c.gpus for c in cells] == [(0,), (0, 1)]
    assert cells[0].id != cells[1].id


def test_bench_command_spells_out_every_setting():
    s = settings(quant="q4_k_m", flash_attn=True, tensor_split=[3, 1], split_mode="row", main_gpu=1)
    line = llamacpp_bench.command(Path("/b/llama-bench"), Path("/g/q4_k_m.gguf"), s, WORKLOAD, -1, 8)
    pairs = dict(zip(line[1::2], line[2::2], strict=False))
    assert line[0] == "/b/llama-bench"
    assert pairs == {
        "-m": "/g/q4_k_m.gguf",
        "-o": "json",
        "-p": "64",
        "-n": "256",
        "-d": "0,64",
        "-r": "3",
        "-ngl": "999",
        "-fa": "1",
        "-b": "512",
        "-ub": "512",
        "-t": "8",
        "-sm": "row",
        "-mg": "1",
        "-nkvo": "0",
        "-ts": "3/1",
    }


def test_bench_command_on_cpu_offloads_nothing():
    line = llamacpp_bench.command(Path("b"), Path("g"), settings(), WORKLOAD, 0, 2)
    assert line[line.index("-ngl") + 1] == "0"
    assert "-ts" not in line


def test_summary_puts_llama_bench_beside_the_cell():
    # rows as llama-bench -o json writes them (fields trimmed)
    rows = [
        {"n_prompt": 64, "n_gen": 0, "n_depth": 0, "avg_ts": 3200.0, "stddev_ts": 10.0, "samples_ts": [3190, 3210]},
        {"n_prompt": 0, "n_gen": 256, "n_depth": 0, "avg_ts": 200.0, "stddev_ts": 1.0, "samples_ts": [199, 201]},
    ]
    metrics = {"decode_tokens_per_s": {"median": 190.0}, "ttft_s": {"median": 0.025}}
    summary = llamacpp_bench.summarise(rows, ["llama-bench"], metrics)
    assert summary["decode_tokens_per_s"] == 200.0
    assert summary["prefill_tokens_per_s"] == 3200.0
    assert summary["decode_ratio"] == pytest.approx(0.95)
    assert summary["prefill_ratio"] == pytest.approx((64 / 0.025) / 3200)
    assert summary["raw"][1]["samples_ts"] == [199, 201]


def test_summary_compares_decode_at_the_prompts_depth():
    # llama-bench -d 0,64: pp and tg at both depths; the cell prefills from 0 and decodes from 64
    rows = [
        {"n_prompt": 64, "n_gen": 0, "n_depth": 0, "avg_ts": 3200.0, "stddev_ts": 10.0},
        {"n_prompt": 64, "n_gen": 0, "n_depth": 64, "avg_ts": 3000.0, "stddev_ts": 10.0},
        {"n_prompt": 0, "n_gen": 256, "n_depth": 0, "avg_ts": 200.0, "stddev_ts": 1.0},
        {"n_prompt": 0, "n_gen": 256, "n_depth": 64, "avg_ts": 190.0, "stddev_ts": 1.0},
    ]
    metrics = {"decode_tokens_per_s": {"median": 190.0}, "ttft_s": {"median": 0.025}}
    summary = llamacpp_bench.summarise(rows, ["llama-bench"], metrics)
    assert (summary["prefill_tokens_per_s"], summary["decode_tokens_per_s"]) == (3200.0, 190.0)
    assert summary["decode_depth"] == 64
    assert summary["decode_ratio"] == pytest.approx(1.0)
    assert len(summary["raw"]) == 4
