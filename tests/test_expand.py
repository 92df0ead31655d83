"""Expansion of a parsed matrix into cells, checked against literal lists."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.engines import ENGINES
from runner.errors import UserError
from runner.expand import Cell, cell_id, expand, find_baseline
from runner.matrix import parse_matrix

TRANSFORMERS = ENGINES["transformers"]


def matrix_of(block: dict[str, Any], **top: Any):
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"new_tokens": 16},
        "defaults": {"gpus": [0], "timeout_s": 100},
        "engines": {"transformers": block},
    }
    raw.update(top)
    return parse_matrix(raw, Path("expand-test.yaml"))


def full(**overrides: Any) -> dict[str, Any]:
    return TRANSFORMERS.resolve(overrides)


def summary(cells: list[Cell]) -> list[tuple[dict[str, Any], tuple[int, ...], int]]:
    return [(c.settings, c.gpus, c.timeout_s) for c in cells]


def test_resolve_fills_every_default_literally():
    assert TRANSFORMERS.resolve({"dtype": "bf16"}) == {
        "dtype": "bf16",
        "grad_mode": "default",
        "attention": "sdpa",
        "quantization": "none",
        "bnb_compute_dtype": None,
        "compile": False,
        "cache": "dynamic",
        "bettertransformer": False,
    }


def test_axes_product_in_order():
    cells = expand(
        matrix_of({"axes": {"dtype": ["fp32", "bf16"], "attention": ["eager", "sdpa"], "compile": [False, True]}})
    )
    assert [(c.settings["dtype"], c.settings["attention"], c.settings["compile"]) for c in cells] == [
        ("fp32", "eager", False),
        ("fp32", "eager", True),
        ("fp32", "sdpa", False),
        ("fp32", "sdpa", True),
        ("bf16", "eager", False),
        ("bf16", "eager", True),
        ("bf16", "sdpa", False),
        ("bf16", "sdpa", True),
    ]
    assert summary(cells)[0] == (full(dtype="fp32", attention="eager", compile=False), (0,), 100)
    assert all(c.engine == "transformers" for c in cells)


def test_exclude_drops_cells_matching_every_key():
    cells = expand(
        matrix_of(
            {
                "axes": {"dtype": ["fp32", "bf16", "fp16"], "attention": ["eager", "sdpa"]},
                "exclude": [{"dtype": "fp16"}, {"dtype": "bf16", "attention": "eager"}],
            }
        )
    )
    assert summary(cells) == [
        (full(dtype="fp32", attention="eager"), (0,), 100),
        (full(dtype="fp32", attention="sdpa"), (0,), 100),
        (full(dtype="bf16", attention="sdpa"), (0,), 100),
    ]


def test_include_is_added_after_exclude_with_its_own_placement():
    cells = expand(
        matrix_of(
            {
                "timeout_s": 70,
                "axes": {"dtype": ["fp32", "fp16"]},
                # the include cell matches the exclude pattern but still runs: include comes after exclude
                "exclude": [{"dtype": "fp16"}],
                "include": [{"dtype": "fp16", "gpus": [1, 2], "timeout_s": 5}, {"dtype": "bf16", "cache": "static"}],
            }
        )
    )
    assert summary(cells) == [
        (full(dtype="fp32"), (0,), 70),
        (full(dtype="fp16"), (1, 2), 5),
        (full(dtype="bf16", cache="static"), (0,), 70),
    ]


def test_include_only_block():
    cells = expand(matrix_of({"include": [{}, {"grad_mode": "no_grad"}], "gpus": []}))
    assert summary(cells) == [
        (full(), (), 100),
        (full(grad_mode="no_grad"), (), 100),
    ]


def test_duplicates_collapse_to_the_first():
    cells = expand(
        matrix_of(
            {
                "axes": {"dtype": ["fp32", "fp32", "bf16"]},
                # the same settings as a product cell (sdpa is the default), a later timeout: collapses
                "include": [{"dtype": "fp32", "attention": "sdpa", "timeout_s": 9}, {"dtype": "bf16", "gpus": [1]}],
            }
        )
    )
    assert summary(cells) == [
        (full(dtype="fp32"), (0,), 100),
        (full(dtype="bf16"), (0,), 100),
        (full(dtype="bf16"), (1,), 100),  # another GPU set is another cell
    ]
    assert len({c.id for c in cells}) == 3


def test_valid_fixture_expands_to_literal_list(matrices):
    path = matrices / "valid.yaml"
    cells = expand(parse_matrix(yaml.safe_load(path.read_text()), path))
    assert summary(cells) == [
        (full(dtype="fp32", attention="eager"), (0,), 120),
        (full(dtype="fp32", attention="sdpa"), (0,), 120),
        (full(dtype="bf16", attention="sdpa"), (0,), 120),
        (full(dtype="fp16"), (1,), 60),
        (full(dtype="bf16", grad_mode="inference_mode"), (0,), 120),
    ]
    assert [c.label for c in cells] == [
        ["FP32", "attn_implementation=eager"],
        ["FP32", "attn_implementation=sdpa"],
        ["BF16", "attn_implementation=sdpa"],
        ["FP16", "attn_implementation=sdpa"],
        ["BF16", "torch.inference_mode()", "attn_implementation=sdpa"],
    ]
    baseline = find_baseline(parse_matrix(yaml.safe_load(path.read_text()), path), cells)
    assert baseline is cells[0]


def test_cell_to_json():
    cell = expand(matrix_of({"include": [{"dtype": "bf16", "gpus": [3, 1]}]}))[0]
    assert cell.to_json() == {
        "id": cell.id,
        "engine": "transformers",
        "software": "HF Transformers",
        "settings": full(dtype="bf16"),
        "label": ["BF16", "attn_implementation=sdpa"],
        "gpus": [3, 1],
        "timeout_s": 100,
        "batch_size": 1,
        "engine_version": None,
        "card": None,
    }


BLOCK = {"axes": {"dtype": ["fp32", "bf16"]}}


def test_cell_ids_are_stable_across_calls():
    first = [c.id for c in expand(matrix_of(copy.deepcopy(BLOCK)))]
    second = [c.id for c in expand(matrix_of(copy.deepcopy(BLOCK)))]
    assert first == second
    assert all(re.fullmatch(r"transformers-[0-9a-f]{12}", i) for i in first)
    assert len(set(first)) == 2
    matrix = matrix_of(copy.deepcopy(BLOCK))
    cell = expand(matrix)[0]
    assert cell_id("transformers", cell.settings, cell.gpus, matrix, cell.batch_size) == cell.id


@pytest.mark.parametrize(
    "change",
    [
        {"workload": {"new_tokens": 32}},
        {"workload": {"new_tokens": 16, "batch_size": 2}},
        {"model": {"synthetic": "shisa-7b-v1"}},
        {"model": {"path": "/ckpt"}},
        {"defaults": {"gpus": [1], "timeout_s": 100}},
        {"defaults": {"gpus": [], "timeout_s": 100}},
    ],
    ids=["new_tokens", "batch_size", "model", "model-path", "gpus", "cpu"],
)
def test_cell_ids_change_with_what_defines_the_measurement(change):
    before = [c.id for c in expand(matrix_of(copy.deepcopy(BLOCK)))]
    after = [c.id for c in expand(matrix_of(copy.deepcopy(BLOCK), **change))]
    assert len(after) == 2
    assert not set(before) & set(after)


def test_cell_id_ignores_timeout_and_matrix_name():
    before = [c.id for c in expand(matrix_of(copy.deepcopy(BLOCK)))]
    after = [
        c.id for c in expand(matrix_of(copy.deepcopy(BLOCK), defaults={"gpus": [0], "timeout_s": 5}, name="other"))
    ]
    assert before == after


def test_find_baseline_picks_exactly_one():
    matrix = matrix_of(
        {"axes": {"dtype": ["fp32", "bf16"], "attention": ["eager", "sdpa"]}},
        baseline={"engine": "transformers", "settings": {"dtype": "bf16", "attention": "eager"}},
    )
    cells = expand(matrix)
    baseline = find_baseline(matrix, cells)
    assert baseline is cells[2]
    assert (baseline.settings["dtype"], baseline.settings["attention"]) == ("bf16", "eager")


def test_find_baseline_matches_resolved_defaults():
    # attention is not an axis, yet {attention: sdpa} picks the cell whose default is sdpa
    matrix = matrix_of(
        {"axes": {"dtype": ["fp32", "bf16"]}},
        baseline={"engine": "transformers", "settings": {"dtype": "bf16", "attention": "sdpa"}},
    )
    cells = expand(matrix)
    assert find_baseline(matrix, cells) is cells[1]


def test_find_baseline_defaults_to_first_cell():
    matrix = matrix_of({"axes": {"dtype": ["bf16", "fp32"]}})
    cells = expand(matrix)
    assert find_baseline(matrix, cells) is cells[0]
    assert cells[0].settings["dtype"] == "bf16"


@pytest.mark.parametrize(
    "settings,count",
    [({"dtype": "fp16"}, "no cell"), ({"dtype": "fp32"}, "2 cells"), ({}, "4 cells")],
)
def test_find_baseline_refuses_zero_or_several(settings, count):
    matrix = matrix_of(
        {"axes": {"dtype": ["fp32", "bf16"], "attention": ["eager", "sdpa"]}},
        baseline={"engine": "transformers", "settings": settings},
    )
    with pytest.raises(UserError) as caught:
        find_baseline(matrix, expand(matrix))
    message = str(caught.value)
    assert message.startswith(f"expand-test.yaml: baseline: {count} of engine 'transformers' match {settings}")
    assert message.endswith("give settings that pick exactly one cell")


def test_exclude_matches_default_valued_settings():
    cells = expand(
        matrix_of({"axes": {"dtype": ["fp32", "bf16"]}, "exclude": [{"dtype": "fp32", "attention": "sdpa"}]})
    )
    assert summary(cells) == [(full(dtype="bf16"), (0,), 100)]


@pytest.mark.parametrize("name", ["matrix.yaml", "matrix-cpu.yaml", "matrix-2gpu.yaml"])
def test_committed_matrices_expand_with_one_baseline(repo, name):
    """The matrices users run as shipped: valid, every cell distinct, the baseline among them."""
    path = repo / name
    matrix = parse_matrix(yaml.safe_load(path.read_text()), path)
    cells = expand(matrix)
    assert len({c.id for c in cells}) == len(cells) > 1
    baseline = find_baseline(matrix, cells)
    assert (baseline.engine, baseline.settings["dtype"], baseline.settings["attention"]) == (
        "transformers",
        "fp32",
        "eager",
    )
    if name == "matrix-2gpu.yaml":
        assert sorted({c.gpus for c in cells}) == [(0,), (0, 1), (1,)]


def test_batch_size_as_an_axis_and_per_cell():
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"batch_size": 2},
        "engines": {
            "vllm": {"gpus": [], "axes": {"enforce_eager": [True], "batch_size": [1, 8]}, "include": [{}]},
            "transformers": {"gpus": [], "batch_size": 4, "include": [{}, {"batch_size": 16}]},
        },
    }
    matrix = parse_matrix(raw, Path("m.yaml"))
    cells = expand(matrix)
    assert [(c.engine, c.batch_size) for c in cells] == [
        ("vllm", 1),
        ("vllm", 8),
        ("vllm", 2),  # no batch_size given: the workload's
        ("transformers", 4),  # the engine's
        ("transformers", 16),
    ]
    assert cells[1].label[-1] == "batch_size=8" and "batch_size=1" not in cells[0].label
    assert cells[1].workload(matrix) == {**matrix.workload.__dict__, "batch_size": 8}
    assert cells[1].to_json()["batch_size"] == 8
    assert len({c.id for c in cells}) == 5  # the batch size is part of what a cell measures
    # a cell at the workload's own batch size keeps the id it had before batch sizes per cell
    assert cells[2].id == cell_id("vllm", cells[2].settings, (), matrix, 2)


@pytest.mark.parametrize(
    "axes,message",
    [
        ({"batch_size": 4}, "m.yaml: engines.vllm.axes.batch_size: expected a non-empty list of values, got 4"),
        ({"batch_size": [1, 0]}, "m.yaml: engines.vllm.axes.batch_size: expected an integer >= 1, got 0"),
    ],
)
def test_batch_size_axis_mistakes(axes, message):
    raw = {"version": 1, "model": {"synthetic": "tiny-mistral"}, "engines": {"vllm": {"gpus": [], "axes": axes}}}
    with pytest.raises(UserError) as caught:
        parse_matrix(raw, Path("m.yaml"))
    assert str(caught.value) == message


def test_engine_version_as_an_axis_keeps_pinned_cells_ids():
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "engines": {"vllm": {"gpus": [], "axes": {"enforce_eager": [True]}}},
    }
    pinned = expand(parse_matrix(raw, Path("m.yaml")))
    raw["engines"]["vllm"]["axes"]["engine_version"] = ["0.31.0", "0.32.0"]
    raw["engines"]["vllm"]["include"] = [{"enforce_eager": True}]  # no version: the pinned release
    cells = expand(parse_matrix(raw, Path("m.yaml")))
    assert [c.engine_version for c in cells] == ["0.31.0", "0.32.0", None]
    assert cells[2].id == pinned[0].id
    assert len({c.id for c in cells}) == 3
    assert cells[0].label == ["vLLM 0.31.0", "tensor_parallel_size=1", "enforce_eager=True"]
    assert cells[1].to_json()["engine_version"] == "0.32.0"


@pytest.mark.parametrize(
    "where,message",
    [
        ({"axes": {"engine_version": [0.24]}}, "m.yaml: engines.vllm.axes.engine_version: expected a release number"),
        ({"include": [{"engine_version": ""}]}, "m.yaml: engines.vllm.include[0].engine_version: expected a release"),
        ({"engine_version": 1, "include": [{}]}, "m.yaml: engines.vllm.engine_version: expected a release number"),
    ],
)
def test_engine_version_mistakes(where, message):
    raw = {"version": 1, "model": {"synthetic": "tiny-mistral"}, "engines": {"vllm": {"gpus": [], **where}}}
    with pytest.raises(UserError) as caught:
        parse_matrix(raw, Path("m.yaml"))
    assert str(caught.value).startswith(message), str(caught.value)


def test_engine_version_belongs_to_an_engine_not_the_defaults():
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "defaults": {"gpus": [], "engine_version": "0.24.0"},
        "engines": {"vllm": {"include": [{}]}},
    }
    with pytest.raises(UserError, match=r"^m.yaml: defaults.engine_version: unknown key"):
        parse_matrix(raw, Path("m.yaml"))
