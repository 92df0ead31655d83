"""ExLlamaV2 around the engine (CUDA only): settings and labels, the synthetic GPTQ layout, EXL2 conversion
planning and cache paths, the speed-test parser, and CPU cells reported as not run here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from runner.engines import ENGINES
from runner.engines.exllamav2 import EXLLAMAV2
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix
from runner.models import derived, gptq_synthetic
from runner.models.architectures import ARCHITECTURES
from runner.models.fingerprint import fingerprint

ENTRYPOINTS = Path(__file__).resolve().parent.parent / "entrypoints"
sys.path.insert(0, str(ENTRYPOINTS))
import exllamav2_convert  # noqa: E402  in-container modules, found on the entrypoints path
import exllamav2_gptq  # noqa: E402
import exllamav2_gptq_quantise  # noqa: E402
import exllamav2_speed  # noqa: E402

SHISA = ARCHITECTURES["shisa-7b-v1"]
SMALL_CALIBRATION = {"measurement_length": 512, "length": 512}


def settings(**overrides):
    return EXLLAMAV2.resolve(overrides)


def test_labels_use_the_seed_tables_words():
    assert ENGINES["exllamav2"] is EXLLAMAV2
    assert EXLLAMAV2.label(settings(bits=8)) == ["EXL2 8.0 bpw"]
    assert EXLLAMAV2.label(settings(bits=4.63)) == ["EXL2 4.63 bpw"]
    assert EXLLAMAV2.label(settings()) == ["EXL2 4.125 bpw"]  # the converter's default target
    assert EXLLAMAV2.label(settings(quant="gptq", cache="q4")) == ["GPTQ 4-bit", "Q4 cache"]
    small = EXLLAMAV2.label(settings(bits=4.63, head_bits=8, cuda_graphs=False, **SMALL_CALIBRATION))
    assert small == [
        "EXL2 4.63 bpw",
        "head 8 bits",
        "calibration rows of 512 (measure), 512 (quantise) tokens",
        "no CUDA graphs",
    ]
    assert EXLLAMAV2.label(settings(quant="gptq", generator="streaming")) == ["GPTQ 4-bit", "streaming generator"]


@pytest.mark.parametrize(
    ("overrides", "gpus", "problem"),
    [
        ({"bits": 9}, (0,), "bits must be between 2 and 8"),
        ({"bits": 1.5}, (0,), "bits must be between 2 and 8"),
        ({"length": 0}, (0,), "length must be at least 1"),
        ({"length": 4096}, (0,), "above 2048 tokens"),
        ({"max_seq_len": 0}, (0,), "max_seq_len must be at least 1"),
        ({}, (0, 1), "one GPU"),
    ],
)
def test_check_refuses_impossible_cells(overrides, gpus, problem):
    assert problem in EXLLAMAV2.check(settings(**overrides), gpus)


def test_check_accepts_the_seed_rows():
    for cell in ({"quant": "gptq"}, {"bits": 8.0}, {"bits": 4.63, **SMALL_CALIBRATION}, {"bits": 30, "quant": "gptq"}):
        assert EXLLAMAV2.check(settings(**cell), (0,)) is None


def test_matrix_yaml_has_the_seed_rows_and_names_a_typo(repo, tmp_path):
    cells = [c for c in expand(load_matrix(repo / "matrix.yaml")) if c.engine == "exllamav2"]
    labels = [c.label[0] for c in cells]
    assert labels == ["GPTQ 4-bit", "GPTQ 4-bit", "EXL2 4.63 bpw", "EXL2 8.0 bpw"]
    assert [c.settings["generator"] for c in cells] == ["dynamic", "streaming", "dynamic", "dynamic"]
    assert all(c.gpus == (0,) for c in cells)
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 8}\n"
        "engines:\n  exllamav2:\n    include: [{quant: exl2, bit: 4.0}]\n"
    )
    with pytest.raises(UserError, match=r"did you mean 'bits'"):
        load_matrix(bad)
    bad.write_text(bad.read_text().replace("bit: 4.0", "generator: stream"))
    with pytest.raises(UserError, match=r"dynamic.*streaming"):
        load_matrix(bad)


def test_gptq_cells_read_a_gptq_checkpoint():
    assert EXLLAMAV2.derived_checkpoint(settings(quant="gptq")) == "gptq"
    assert EXLLAMAV2.derived_checkpoint(settings(bits=8.0)) is None


def test_shisa_gptq_layout_is_act_order_gptq():
    tensors = gptq_synthetic.gptq_tensors(SHISA, 128)
    q = tensors["model.layers.0.self_attn.q_proj.qweight"]
    assert (q.shape, q.dtype) == ((4096 // 8, 4096), "I32")  # packed along the input
    assert tensors["model.layers.0.self_attn.k_proj.qzeros"].shape == (32, 1024 // 8)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (14336 // 128, 4096)
    g_idx = tensors["model.layers.0.mlp.down_proj.g_idx"]
    assert (g_idx.shape, g_idx.dtype, g_idx.fill, g_idx.group_size) == ((14336,), "I32", "group_index", 128)
    assert tensors["lm_head.weight"].dtype == "F16" and tensors["lm_head.weight"].shape == (120128, 4096)
    assert len(tensors) == 2 + 32 * (2 + 7 * 4) + 1
    config = gptq_synthetic.gptq_config(SHISA, 128)["quantization_config"]
    assert config == {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": True,
        "sym": True,
        "checkpoint_format": "gptq",
    }


def model_record(folder: Path, store: Path, synthetic: bool = True) -> dict:
    (store / "derived").mkdir(parents=True, exist_ok=True)
    return {
        "name": folder.name,
        "path": str(folder),
        "synthetic": synthetic,
        "fingerprint": fingerprint(folder),
        "derived_dir": str(store / "derived"),
    }


def test_materialised_gptq_checkpoint_reads_back_in_range(tmp_path, tiny_model):
    model = model_record(tiny_model, tmp_path)
    made = derived.cell_model("gptq", model, lambda _: None)
    folder = Path(made["path"])
    assert folder.parent == tmp_path / "derived" / "gptq"
    assert made["name"] == f"{model['name']} (GPTQ 4-bit)" and made["derived_from"] == str(tiny_model)
    assert gptq_synthetic.is_gptq_checkpoint(folder) and not gptq_synthetic.is_gptq_checkpoint(tiny_model)
    assert json.loads((folder / "quantize_config.json").read_text())["desc_act"] is True
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (tiny_model / name).read_bytes()
    with safe_open(folder / "model.safetensors", "np") as f:
        qweight = f.get_tensor("model.layers.1.mlp.down_proj.qweight")
        scales = f.get_tensor("model.layers.1.mlp.down_proj.scales")
        g_idx = f.get_tensor("model.layers.1.mlp.down_proj.g_idx")
        names = set(f.keys())
    config = json.loads((folder / "config.json").read_text())
    group = config["quantization_config"]["group_size"]
    assert names == set(gptq_synthetic.gptq_tensors(config, group))
    hidden, intermediate = config["hidden_size"], config["intermediate_size"]
    assert qweight.shape == (intermediate // 8, hidden) and scales.shape == (intermediate // group, hidden)
    # act-order: every group holds exactly group_size input channels, scattered
    assert np.bincount(g_idx, minlength=intermediate // group).tolist() == [group] * (intermediate // group)
    assert not (np.diff(g_idx) >= 0).all()
    assert (scales > 0).all()
    assert derived.cell_model("gptq", made, lambda _: None) is made  # a GPTQ checkpoint is read as it is
    # written again in another store: the same fingerprint, so what is derived from it keeps its key
    again = derived.cell_model("gptq", model_record(tiny_model, tmp_path / "other"), lambda _: None)
    assert Path(again["path"]) != folder and fingerprint(Path(again["path"])) == fingerprint(folder)
    real = model_record(tiny_model, tmp_path, synthetic=False)
    assert derived.cell_model("gptq", real, lambda _: None) is real  # a real model: the cell says what it needs


def test_exl2_cache_paths_follow_checkpoint_release_and_calibration(tmp_path):
    model = {"name": "shisa-7b-v1", "path": "/m/shisa", "fingerprint": "abc"}
    cache = exllamav2_convert.Exl2Cache(model, tmp_path, "0.3.2")
    s = settings(bits=4.63, **SMALL_CALIBRATION)
    assert cache.folder.parent == tmp_path / "exl2" and cache.folder.name.startswith("shisa-7b-v1-")
    assert cache.measurement_path(s).name == "measurement-l512.json"
    assert cache.model_path(s).name == "4.63bpw-h6-m512-q512"
    assert cache.model_path(settings(bits=8)).name == "8.0bpw-h6-m2048-q2048"
    # the same measurement serves every bit rate; another release or checkpoint is another folder
    assert cache.measurement_path(settings(bits=8, **SMALL_CALIBRATION)) == cache.measurement_path(s)
    assert exllamav2_convert.Exl2Cache(model, tmp_path, "0.3.1").folder != cache.folder
    assert exllamav2_convert.Exl2Cache({**model, "fingerprint": "abd"}, tmp_path, "0.3.2").folder != cache.folder


def test_converter_commands_spell_out_each_pass(tmp_path):
    s = settings(bits=4.63, **SMALL_CALIBRATION)
    measure = exllamav2_convert.measurement_command(Path("/src"), Path("/w"), Path("/m.json"), s)
    assert measure[:3] == [sys.executable, "-m", "exllamav2.conversion.convert_exl2"]
    pairs = dict(zip(measure[3::2], measure[4::2], strict=True))
    assert pairs == {"-i": "/src", "-o": "/w", "-om": "/m.json", "-ml": "512"}
    quantise = exllamav2_convert.quantise_command(Path("/src"), Path("/w"), Path("/m.json"), Path("/out"), s)
    pairs = dict(zip(quantise[3::2], quantise[4::2], strict=True))
    assert pairs == {
        "-i": "/src",
        "-o": "/w",
        "-m": "/m.json",
        "-cf": "/out",
        "-b": "4.63",
        "-hb": "6",
        "-l": "512",
    }


def test_converter_errors_are_read_from_its_output():
    log = " -- Beginning new job\n ## Error: 9 is not a supported option for head layer bitrate\n"
    assert exllamav2_convert.converter_error(log) == "## Error: 9 is not a supported option for head layer bitrate"
    assert exllamav2_convert.converter_error(" -- fine\n") is None
    aborted = (
        " -- model.layers.11.mlp\n ## Measurement/inference error (3): hidden_states\n"
        " ## inf elements in output states row 2: 90000 / 2097152 = 4.29%\n"
        " ## Number of inf elements above threshold, aborting\n"
    )
    assert exllamav2_convert.converter_error(aborted) == (
        "## Measurement/inference error (3): hidden_states / "
        "## inf elements in output states row 2: 90000 / 2097152 = 4.29% / "
        "## Number of inf elements above threshold, aborting"
    )


SPEED_OUTPUT = """ -- Measuring token speed...
 ** Position     1 + 127 tokens:  150.0000 t/s
 ** Position   128 + 128 tokens:  140.0000 t/s
 ** Position   256 +  64 tokens:  128.0000 t/s
"""


def test_speed_test_summary_weighs_each_stretch_by_its_tokens():
    metrics = {"decode_tokens_per_s": {"median": 133.0}}
    summary = exllamav2_speed.summarise(SPEED_OUTPUT, ["test_inference.py"], metrics, "q4")
    seconds = 127 / 150 + 128 / 140 + 64 / 128
    assert summary["decode_tokens_per_s"] == pytest.approx(319 / seconds)
    assert summary["decode_ratio"] == pytest.approx(133.0 / (319 / seconds))
    assert summary["positions"] == "1-320"
    assert "FP16 cache" in summary["note"] and "Q4" in summary["note"]
    assert "warmup_ratio" not in summary  # no token count given
    cold = exllamav2_speed.summarise(SPEED_OUTPUT, ["x"], {**metrics, "warmup_s": [12.8]}, "fp16", new_tokens=256)
    assert cold["warmup_tokens_per_s"] == pytest.approx(20.0)
    assert cold["warmup_ratio"] == pytest.approx(20.0 / (319 / seconds))
    failed = exllamav2_speed.summarise("Traceback\nRuntimeError: boom\n", ["x"], metrics, "fp16")
    assert failed["error"].endswith("RuntimeError: boom")


def test_speed_test_command_matches_the_cell(tmp_path):
    script = tmp_path / "test_inference.py"
    line = exllamav2_speed.command(script, "/models/exl2", 512, cuda_graphs=False)
    assert line == [sys.executable, str(script), "-m", "/models/exl2", "-s", "-l", "512", "-ng"]


def test_cpu_cells_are_not_run_here(runner_cli, tmp_path):
    matrix = tmp_path / "exl-cpu.yaml"
    matrix.write_text(
        "version: 1\nname: exl-cpu\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 16, new_tokens: 8, warmup: 1, repetitions: 2}\n"
        "defaults: {gpus: []}\n"
        "engines:\n  exllamav2:\n    include: [{quant: exl2, bits: 4.63}]\n"
    )
    done = runner_cli(str(matrix), "-o", str(tmp_path / "run"), "--executor", "local", "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not run here: ExLlamaV2 runs on CUDA GPUs only" in done.stdout
    assert "0 ok, 1 not run here, 0 failed" in done.stdout


def cell_engine(model_dir: Path, store: Path, **overrides):
    import run_exllamav2

    spec = {
        "cell": {"settings": settings(**overrides), "gpus": [0]},
        "workload": {"prompt_tokens": 16, "new_tokens": 8, "batch_size": 1},
        "model": {"path": str(model_dir), "name": model_dir.name, "derived_dir": str(store)},
    }
    return run_exllamav2.Engine(spec)


def test_a_cell_refuses_a_checkpoint_of_the_wrong_kind(tmp_path, tiny_model):
    import harness

    awq = tmp_path / "awq-export"
    awq.mkdir()
    (awq / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    with pytest.raises(
        harness.CellInvalid, match=r"quant gptq needs a GPTQ or an unquantised checkpoint .* already awq"
    ):
        cell_engine(awq, tmp_path, quant="gptq").prepare()
    gptq = gptq_synthetic.materialise(model_record(tiny_model, tmp_path), log=lambda _: None)
    assert cell_engine(gptq, tmp_path, quant="gptq").prepare() is None  # read as it is
    with pytest.raises(harness.CellInvalid, match="already gptq"):
        cell_engine(gptq, tmp_path, quant="exl2").prepare()
    signed = tmp_path / "exl2-export"
    signed.mkdir()
    (signed / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "exl2", "bits": 4.0}}))
    assert cell_engine(signed, tmp_path, quant="exl2").prepare() is None  # an EXL2 export is read as it is


def test_without_a_gptq_quantiser_a_real_model_cell_says_how_to_get_one(tmp_path, tiny_model, monkeypatch):
    import harness

    monkeypatch.delenv("EXLLAMAV2_GPTQ_QUANTISER", raising=False)
    with pytest.raises(harness.CellUnsupported, match=r"EXLLAMAV2_GPTQ_QUANTISER is not set: use the exllamav2 image"):
        cell_engine(tiny_model, tmp_path / "derived", quant="gptq").prepare()
    monkeypatch.setenv("EXLLAMAV2_GPTQ_QUANTISER", sys.executable)  # a real Python, without GPTQModel
    with pytest.raises(harness.CellUnsupported, match=r"has no GPTQModel \(.*PackageNotFoundError"):
        cell_engine(tiny_model, tmp_path / "derived", quant="gptq").prepare()
    assert not (tmp_path / "derived").exists()  # nothing half-made in the store


def test_gptq_layout_check_reads_what_exllamav2_needs(tmp_path, tiny_model):
    gptq = gptq_synthetic.materialise(model_record(tiny_model, tmp_path), log=lambda _: None)
    assert exllamav2_gptq.layout_problems(gptq) == []
    assert exllamav2_gptq.layout_problems(tiny_model) == [
        "quantization_config is None None-bit, not gptq 4-bit",
        "no .qweight tensor in its safetensors",
    ]
    eight = tmp_path / "gptq-8bit"
    eight.mkdir()
    for item in gptq.iterdir():
        (eight / item.name).symlink_to(item)
    config = json.loads((gptq / "config.json").read_text())
    config["quantization_config"]["bits"] = 8
    (eight / "config.json").unlink()
    (eight / "config.json").write_text(json.dumps(config))
    assert exllamav2_gptq.layout_problems(eight) == ["quantization_config is gptq 8-bit, not gptq 4-bit"]


def test_gptq_recipe_group_size_and_calibration():
    assert exllamav2_gptq_quantise.group_size_for({4096, 14336}) == 128  # shisa-7b / Mistral-7B
    assert exllamav2_gptq_quantise.group_size_for({64, 128}) == 64  # tiny-mistral
    with pytest.raises(SystemExit, match="no GPTQ group size"):
        exllamav2_gptq_quantise.group_size_for({48})
    assert exllamav2_gptq_quantise.calibration_windows(list(range(10)), samples=8, tokens=4) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]
    key = exllamav2_gptq.QUANTISER.cache_key("fingerprint-a", "7.0.0")
    assert key == exllamav2_gptq.QUANTISER.cache_key("fingerprint-a", "7.0.0")
    assert key != exllamav2_gptq.QUANTISER.cache_key("fingerprint-b", "7.0.0")
    assert key != exllamav2_gptq.QUANTISER.cache_key("fingerprint-a", "7.7.0")


@pytest.mark.slow
def test_gptqmodel_quantises_a_real_model_once(tmp_path, tiny_model, gptq_quantiser, monkeypatch):
    """GPTQModel itself (the image's side-venv pins, `make gptq-quantiser`), on CPU on the tiny model: the cell's
    prepare step quantises it, the layout is what ExLlamaV2 reads, and a second cell finds it in the store."""
    monkeypatch.setenv("EXLLAMAV2_GPTQ_QUANTISER", str(gptq_quantiser))
    model = model_record(tiny_model, tmp_path, synthetic=False)
    first = exllamav2_gptq.gptq_checkpoint(model, tmp_path / "derived")[1]
    second = exllamav2_gptq.gptq_checkpoint(model, tmp_path / "derived")[1]
    made = Path(first["gptq_checkpoint"])
    assert made.parent == tmp_path / "derived" / "gptq-gptqmodel" and second["gptq_checkpoint"] == str(made)
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert exllamav2_gptq.layout_problems(made) == []
    assert sorted(p.name for p in made.parent.iterdir() if p.name.startswith("gptq_log_")), "GPTQModel's own log"
    quantised = first["quantised_by"]
    assert quantised["gptqmodel"] == "7.0.0" and quantised["device"] == "cpu"
    assert quantised["recipe"] == {"bits": 4, "group_size": 64, "desc_act": True, "sym": True, "skipped": ["lm_head"]}
    config = json.loads((made / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["bits"], config["group_size"], config["desc_act"]) == ("gptq", 4, 64, True)
    with safe_open(made / "model.safetensors", "np") as f:
        g_idx = f.get_tensor("model.layers.0.mlp.down_proj.g_idx")
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").dtype == np.int32
    assert np.bincount(g_idx).tolist() == [64, 64]  # act-order: two groups of 64 input channels


def test_notes_say_who_made_a_gptq_checkpoint():
    made = {"quantised_by": {"quantiser": "GPTQModel", "gptqmodel": "7.0.0"}, "cache_hit": False, "seconds": 12.5}
    assert EXLLAMAV2.notes({"prepare": made}) == ["GPTQ by GPTQModel 7.0.0 (made in 12.5 s)"]
    assert EXLLAMAV2.notes({"prepare": {**made, "cache_hit": True}}) == ["GPTQ by GPTQModel 7.0.0 (from the store)"]


def test_notes_compare_the_cells_first_pass_with_the_speed_test():
    reference = {"decode_tokens_per_s": 19.25, "warmup_tokens_per_s": 18.23, "warmup_ratio": 18.23 / 19.25}
    assert EXLLAMAV2.notes({"reference": reference}) == [
        "first pass at each length (the warm-up) 18.2 tok/s = 0.95x the speed test, which also visits each length once"
    ]
