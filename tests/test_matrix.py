"""Matrix parsing: the valid fixture parses with every default applied, and each
mistake fixture makes ``python -m runner FILE --list`` print exactly one line
naming the file, the key and the fix, and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.errors import UserError
from runner.matrix import (
    Baseline,
    EngineBlock,
    ModelSpec,
    Placement,
    Workload,
    load_matrix,
    parse_matrix,
)

FIXTURE_DIR = "tests/fixtures/matrices"

# fixture file, key path as printed, texts the fix/suggestion must contain
MISTAKES = [
    ("err_unknown_top_key.yaml", "engnes", ["unknown key", "did you mean 'engines'?"]),
    ("err_unknown_setting.yaml", "engines.transformers.axes.dtpye", ["unknown key", "did you mean 'dtype'?"]),
    ("err_unknown_engine.yaml", "engines.transformer", ["unknown key", "did you mean 'transformers'?"]),
    ("err_wrong_type_workload.yaml", "workload.new_tokens", ["expected an integer >= 2, got 'many'"]),
    ("err_wrong_type_setting.yaml", "engines.transformers.axes.compile", ["'yes' is a str, expected bool"]),
    ("err_axis_not_list.yaml", "engines.transformers.axes.dtype", ["expected a non-empty list of values, got 'fp32'"]),
    ("err_bad_setting_value.yaml", "engines.transformers.axes.dtype", ["'fp8' is not one of 'fp32', 'bf16', 'fp16'"]),
    ("err_missing_version.yaml", "version", ["missing", "add 'version: 1' at the top"]),
    ("err_wrong_version.yaml", "version", ["unsupported version 2", "this runner reads version 1"]),
    ("err_missing_model.yaml", "model", ["missing", "see matrix.yaml"]),
    (
        "err_two_model_sources.yaml",
        "model",
        ["give exactly one of 'synthetic: <architecture>', 'id: <hub id>' or 'path: <folder>'"],
    ),
    ("err_revision_without_id.yaml", "model.revision", ["only applies to 'id:'"]),
    (
        "err_unknown_architecture.yaml",
        "model.synthetic",
        ["unknown architecture 'tiny-mistrel'", "did you mean 'tiny-mistral'?", "known: shisa-7b-v1, tiny-mistral"],
    ),
    (
        "err_bad_gpus.yaml",
        "defaults.gpus",
        ["expected a list of GPU indices like [0] or [0, 1] ([] for CPU)", "[0, -1]"],
    ),
    ("err_gpu_twice.yaml", "engines.transformers.include[0].gpus", ["GPU listed twice in [0, 0]"]),
    ("err_bad_include_timeout.yaml", "engines.transformers.include[1].timeout_s", ["expected an integer >= 1, got 0"]),
    # gpus cannot narrow an exclude pattern: the fix lists the keys an exclude may use
    (
        "err_exclude_gpus.yaml",
        "engines.transformers.exclude[0].gpus",
        ["exclude patterns match settings only", "include entry"],
    ),
    ("err_empty_engines.yaml", "engines", ["empty", "name at least one engine, e.g. 'transformers:'"]),
    ("err_engine_no_cells.yaml", "engines.transformers", ["no cells", "give 'axes:'", "'include:'"]),
    (
        "err_baseline_unknown_engine.yaml",
        "baseline.engine",
        ["'vllm' is not one of this matrix's engines (transformers)"],
    ),
    (
        "err_baseline_no_cell.yaml",
        "baseline",
        ["no cell of engine 'transformers'", "{'dtype': 'fp16'}", "give settings that pick exactly one cell"],
    ),
    (
        "err_baseline_several_cells.yaml",
        "baseline",
        ["2 cells of engine 'transformers'", "{'dtype': 'fp32'}", "give settings that pick exactly one cell"],
    ),
    ("err_invalid_yaml.yaml", "line 3", ["not valid YAML", "expected ',' or '}'"]),
    ("err_name_is_a_path.yaml", "name", ["'../../../tmp/escape' is not a plain folder name", "(or -o DIR)"]),
    ("err_nested_too_deep.yaml", None, ["nested too deeply to read"]),
    ("err_target_cv_without_max.yaml", "workload.target_cv_pct", ["only applies with max_repetitions"]),
    ("err_max_repetitions_below.yaml", "workload.max_repetitions", ["expected an integer >= 3, got 2"]),
    ("err_target_cv_zero.yaml", "workload.target_cv_pct", ["expected a number > 0 (percent), got 0"]),
    ("err_top_level_list.yaml", "(top level)", ["expected a mapping, got list"]),
    # a key given twice: YAML would silently keep the last one; the line is the second occurrence
    ("err_duplicate_engine.yaml", "line 8", ["not valid YAML", "key 'transformers' given twice", "merge"]),
    ("err_duplicate_workload_key.yaml", "line 8", ["not valid YAML", "key 'new_tokens' given twice", "merge"]),
    ("err_duplicate_flow_key.yaml", "line 8", ["not valid YAML", "key 'dtype' given twice", "merge"]),
]

BUGS = [
    pytest.param(
        "err_defaults_unknown_key.yaml",
        "defaults.gpu",
        ["unknown key", "did you mean 'gpus'?"],
        id="defaults-typo-is-ignored",
    ),
    pytest.param(
        "err_exclude_every_cell.yaml",
        "engines.transformers*",  # engines.transformers or engines.transformers.exclude
        ["exclude"],
        id="exclude-removes-every-cell",
    ),
    pytest.param(
        "err_version_true.yaml",
        "version",
        ["1"],
        id="version-true-accepted",
    ),
    pytest.param(
        "err_yaml_control_character.yaml",
        None,  # a file-level problem: no key, but still one line
        ["not valid YAML", "#x0007"],
        id="yaml-control-character-two-lines",
    ),
    pytest.param(
        "err_not_utf8.yaml",
        None,
        ["UTF-8"],
        id="not-utf8-traceback",
    ),
]


def _check_one_line_error(runner_cli, name: str, key: str | None, fixes: list[str]) -> None:
    """key: the key path as printed between colons; 'a.b*' also accepts a deeper 'a.b.c'; None: file-level."""
    relative = f"{FIXTURE_DIR}/{name}"
    done = runner_cli(relative, "--list", timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stderr == lines[0] + "\n"
    line = lines[0]
    assert line.startswith("error: ")
    assert relative in line
    if key is not None and key.endswith("*"):
        assert f": {key[:-1]}: " in line or f": {key[:-1]}." in line, line
    elif key is not None:
        assert f": {key}: " in line, line
    for fix in fixes:
        assert fix in line, (fix, line)


@pytest.mark.parametrize("name,key,fixes", MISTAKES, ids=[m[0].removesuffix(".yaml") for m in MISTAKES])
def test_mistake_is_one_line_naming_file_key_and_fix(runner_cli, name, key, fixes):
    _check_one_line_error(runner_cli, name, key, fixes)


@pytest.mark.parametrize("name,key,fixes", BUGS)
def test_mistake_bugs(runner_cli, name, key, fixes):
    _check_one_line_error(runner_cli, name, key, fixes)


def test_every_error_fixture_is_covered(matrices):
    named = {m[0] for m in MISTAKES} | {p.values[0] for p in BUGS}
    on_disk = {p.name for p in matrices.glob("*.yaml") if p.name.startswith(("err_", "err_"))}
    assert on_disk == named


def test_missing_file_is_one_line(runner_cli, tmp_path):
    missing = tmp_path / "nope.yaml"
    done = runner_cli(str(missing), "--list", timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {missing}: no such file")


def test_valid_fixture_lists_its_cells(runner_cli):
    done = runner_cli(f"{FIXTURE_DIR}/valid.yaml", "--list", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].endswith("HF Transformers: FP32; attn_implementation=eager (baseline)")
    assert sum("(baseline)" in line for line in lines) == 1
    assert "[1]" in lines[3] and "FP16" in lines[3]
    assert all(line.startswith("transformers-") for line in lines)


def test_listing_into_a_closed_pipe_stops_quietly():
    """`python -m runner matrix.yaml --list | head -1`: the reader is gone before the runner writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "matrix.yaml", "--list"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    process.stdout.close()  # long before the child has imported the runner and printed anything
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert errors == ""  # no BrokenPipeError traceback


def test_parse_valid_fixture_applies_defaults(matrices):
    path = matrices / "valid.yaml"
    matrix = parse_matrix(yaml.safe_load(path.read_text()), path)
    assert matrix.path == path
    assert matrix.name == "valid-example"
    assert matrix.model == ModelSpec(synthetic="tiny-mistral")
    assert matrix.model.identity() == {"synthetic": "tiny-mistral"}
    # only new_tokens and repetitions given: the rest are the Workload defaults
    assert matrix.workload == Workload(prompt_tokens=64, new_tokens=16, batch_size=1, warmup=1, repetitions=2)
    # defaults gives only timeout_s: gpus takes the placement default (GPU 0)
    assert matrix.defaults == Placement(gpus=(0,), timeout_s=300)
    assert matrix.baseline == Baseline(engine="transformers", settings={"dtype": "fp32", "attention": "eager"})
    assert list(matrix.engines) == ["transformers"]
    block = matrix.engines["transformers"]
    assert block == EngineBlock(
        axes={"dtype": ["fp32", "bf16"], "attention": ["eager", "sdpa"]},
        include=[
            {"dtype": "fp16", "gpus": (1,), "timeout_s": 60},
            {"dtype": "bf16", "grad_mode": "inference_mode"},
        ],
        exclude=[{"dtype": "bf16", "attention": "eager"}],
        # the engine block overrides timeout_s, inherits gpus from defaults
        placement=Placement(gpus=(0,), timeout_s=120),
    )


def test_load_matrix_equals_parse_matrix(matrices):
    path = matrices / "valid.yaml"
    assert load_matrix(path) == parse_matrix(yaml.safe_load(path.read_text()), path)


def _minimal(**extra):
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "engines": {"transformers": {"axes": {"dtype": ["fp32"]}}},
    }
    raw.update(extra)
    return raw


def test_parse_minimal_uses_every_default():
    matrix = parse_matrix(_minimal(), Path("dir/minimal.yaml"))
    assert matrix.name == "minimal"  # the file's stem when no name is given
    assert matrix.workload == Workload(prompt_tokens=64, new_tokens=256, batch_size=1, warmup=1, repetitions=3)
    assert matrix.defaults == Placement(gpus=(0,), timeout_s=1800)
    assert matrix.baseline is None
    assert matrix.engines["transformers"].placement == Placement(gpus=(0,), timeout_s=1800)
    assert matrix.engines["transformers"].include == []
    assert matrix.engines["transformers"].exclude == []


def test_parse_gpus_forms():
    raw = _minimal(defaults={"gpus": 2})
    raw["engines"]["transformers"]["include"] = [{"dtype": "bf16", "gpus": []}, {"dtype": "fp16", "gpus": 3}]
    matrix = parse_matrix(raw, Path("m.yaml"))
    assert matrix.defaults.gpus == (2,)  # a bare integer is one GPU
    assert matrix.engines["transformers"].placement.gpus == (2,)
    assert matrix.engines["transformers"].include == [{"dtype": "bf16", "gpus": ()}, {"dtype": "fp16", "gpus": (3,)}]


def test_parse_engine_level_gpus_override_defaults():
    raw = _minimal(defaults={"gpus": [0], "timeout_s": 50})
    raw["engines"]["transformers"]["gpus"] = [2, 3]
    matrix = parse_matrix(raw, Path("m.yaml"))
    assert matrix.engines["transformers"].placement == Placement(gpus=(2, 3), timeout_s=50)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({**_minimal(), "model": {"path": ""}}, "m.yaml: model.path: expected a non-empty string, got ''"),
        (_minimal(workload={"batch_size": True}), "m.yaml: workload.batch_size: expected an integer >= 1, got True"),
        (_minimal(workload={"warmup": -1}), "m.yaml: workload.warmup: expected an integer >= 0, got -1"),
        (_minimal(workload={"new_tokens": 1}), "m.yaml: workload.new_tokens: expected an integer >= 2, got 1"),
        (_minimal(defaults={"gpus": [True]}), "m.yaml: defaults.gpus: expected a list of GPU indices"),
        (
            _minimal(baseline={"engine": "transformers", "settings": {"dtyp": "fp32"}}),
            "m.yaml: baseline.settings.dtyp: unknown key; did you mean 'dtype'?",
        ),
        (None, "m.yaml: version: missing; add 'version: 1' at the top"),
    ],
)
def test_parse_errors_direct(raw, message):
    with pytest.raises(UserError) as caught:
        parse_matrix(raw, Path("m.yaml"))
    assert str(caught.value).startswith(message), str(caught.value)


def test_only_takes_displayed_names_and_a_miss_lists_what_there_is(runner_cli):
    shown = runner_cli("matrix-cpu.yaml", "--list", "--only", "llama.cpp", timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 3 and all("llama.cpp:" in line for line in lines)  # fp16, q8_0, q4_k_m
    missed = runner_cli("matrix-cpu.yaml", "--list", "--only", "mlc", timeout=60)
    assert missed.returncode == 1 and missed.stdout == ""
    head, *listed = missed.stderr.splitlines()
    assert head.startswith("error: --only mlc: no cell matches; give part of a cell id, an engine (")
    assert "llamacpp (llama.cpp)" in head and "vllm (vLLM)" in head
    # every cell of the matrix, as --list shows it (without the baseline mark), so the next try can pick one
    every = runner_cli("matrix-cpu.yaml", "--list", timeout=60).stdout.replace(" (baseline)", "").splitlines()
    assert head.endswith(f"; its {len(every)} cells:")
    assert listed == [f"  {line}" for line in every]
    assert "  llamacpp-38e042721db6  [cpu]  llama.cpp: fp16" in listed


def test_an_only_miss_in_a_large_matrix_counts_the_cells_and_points_at_list(runner_cli, tmp_path):
    matrix = tmp_path / "large.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\ndefaults: {gpus: []}\nengines:\n  llamacpp:\n"
        "    axes: {quant: [f16, q8_0, q4_k_m, q4_0, q6_k, q5_k_m], n_ctx: [256, 512, 1024, 2048, 4096, 8192, 16384]}\n"
    )
    missed = runner_cli(str(matrix), "--only", "exllama", timeout=60)
    assert missed.returncode == 1
    assert missed.stderr.splitlines() == [
        "error: --only exllama: no cell matches; give part of a cell id, an engine (llamacpp (llama.cpp)) or a "
        f"setting as --list shows it; the matrix has 42 cells: python -m runner {matrix} --list"
    ]
    assert len(runner_cli(str(matrix), "--list", timeout=60).stdout.splitlines()) == 42


def test_help_names_the_other_commands(runner_cli):
    done = runner_cli("--help", timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "python -m runner build [ENGINE ...]" in text and "python -m runner images --render|--check" in text


def test_a_missing_model_path_is_one_line_and_leaves_no_run_folder(runner_cli, tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("version: 1\nmodel: {path: no/such/ckpt}\nengines:\n  transformers:\n    axes: {dtype: [fp32]}\n")
    folder = tmp_path / "run"
    done = runner_cli(str(matrix), "-o", str(folder), timeout=60)
    assert done.returncode == 1
    assert (
        done.stderr == f"error: {matrix}: model.path: {tmp_path / 'no/such/ckpt'} does not exist; give a "
        "checkpoint folder (relative paths are from the matrix file's folder)\n"
    )
    assert not folder.exists()
