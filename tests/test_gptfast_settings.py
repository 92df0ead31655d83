"""The gpt-fast engine description and its entrypoint's pure helpers, without gpt-fast or torch: settings,
labels and checks, one-line matrix errors with a did-you-mean, the ModelArgs adapter against the
synthetic architectures, the store's names and cache keys, generate.py's command and output parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from runner.engines import ENGINES
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix
from runner.models.architectures import ARCHITECTURES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import gptfast_bench  # in-container modules, found on the entrypoints path
import gptfast_checkpoint
import gptfast_tool

ENGINE = ENGINES["gptfast"]
WORKLOAD = {"prompt_tokens": 64, "new_tokens": 256, "batch_size": 1, "warmup": 1, "repetitions": 3}


def settings(**overrides):
    return ENGINE.resolve(overrides)


def test_defaults_are_generate_pys_compiled_bf16():
    s = settings()
    assert s == {
        "precision": "bf16",
        "groupsize": 128,
        "compile": True,
        "compile_mode": "reduce-overhead",
        "compile_prefill": False,
    }
    assert ENGINE.check(s, (0,)) is None
    assert ENGINE.files == ("run_gptfast.py", "gptfast_checkpoint.py", "gptfast_tool.py", "gptfast_bench.py")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ["bf16", 'torch.compile(mode="reduce-overhead")']),
        ({"precision": "int8"}, ["int8", 'torch.compile(mode="reduce-overhead")']),
        ({"precision": "int4", "groupsize": 32}, ["int4 groupsize=32", 'torch.compile(mode="reduce-overhead")']),
        ({"compile": False}, ["bf16", "eager"]),
        (
            {"compile_mode": "max-autotune", "compile_prefill": True},
            ["bf16", 'torch.compile(mode="max-autotune")', "compile_prefill"],
        ),
    ],
)
def test_labels(overrides, expected):
    assert ENGINE.label(settings(**overrides)) == expected


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        ({"groupsize": 32}, (0,), "groupsize applies to int4 only (precision is bf16)"),
        ({"compile": False, "compile_prefill": True}, (0,), "compile_prefill needs compile: true"),
        ({"compile": False, "compile_mode": "default"}, (0,), "compile_mode 'default' needs compile: true"),
        ({}, (0, 1), "a gpt-fast cell runs on one GPU"),
    ],
)
def test_check_rejects_inconsistent_cells(overrides, gpus, expected):
    assert expected in ENGINE.check(settings(**overrides), gpus)


def test_int4_on_cpu_passes_the_matrix_check():
    """int4 needs CUDA: the cell itself says 'not run here' (run_gptfast.INT4_ON_CPU), the matrix does not stop."""
    assert ENGINE.check(settings(precision="int4"), ()) is None


def write_matrix(tmp_path: Path, engine_block: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nname: t\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 8}\ndefaults: {gpus: [0]}\n"
        f"engines:\n  gptfast:\n{engine_block}"
    )
    return path


def test_unknown_setting_gets_a_did_you_mean(tmp_path):
    path = write_matrix(tmp_path, "    include: [{precison: int8}]\n")
    with pytest.raises(UserError) as caught:
        expand(load_matrix(path))
    message = str(caught.value)
    assert "\n" not in message and "precison" in message and "did you mean 'precision'?" in message


def test_bad_value_names_the_choices(tmp_path):
    path = write_matrix(tmp_path, "    axes: {precision: [int3]}\n")
    with pytest.raises(UserError) as caught:
        load_matrix(path)
    assert str(caught.value).startswith(f"{path}: engines.gptfast.axes.precision")
    assert "'int4'" in str(caught.value)


def test_matrix_rows_expand_on_gpu_0(repo):
    cells = [c for c in expand(load_matrix(repo / "matrix.yaml")) if c.engine == "gptfast"]
    assert [(c.settings["precision"], c.gpus) for c in cells] == [("bf16", (0,)), ("int8", (0,)), ("int4", (0,))]


# ---- the ModelArgs adapter -------------------------------------------------------------------------------


def test_model_args_for_shisa_7b():
    assert gptfast_checkpoint.model_args(ARCHITECTURES["shisa-7b-v1"]) == {
        "block_size": 32768,
        "vocab_size": 120128,
        "n_layer": 32,
        "n_head": 32,
        "n_local_heads": 8,
        "dim": 4096,
        "intermediate_size": 14336,
        "rope_base": 10000.0,
        "norm_eps": 1e-5,
    }


def test_model_args_for_the_tiny_model_and_transformers_5_rope_parameters():
    config = {**ARCHITECTURES["tiny-mistral"], "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    del config["rope_theta"]
    args = gptfast_checkpoint.model_args(config)
    assert (args["dim"], args["n_head"], args["n_local_heads"], args["vocab_size"]) == (64, 2, 1, 4096)
    assert args["rope_base"] == 5e5 and "rope_scaling" not in args


def test_llama3_rope_scaling_maps_to_gpt_fasts_keys():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    config = {
        **ARCHITECTURES["tiny-mistral"],
        "model_type": "llama",
        "rope_scaling": {**scaling, "original_max_position_embeddings": 8192},
    }
    assert gptfast_checkpoint.model_args(config)["rope_scaling"] == {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model_type": "qwen2"}, "model_type 'qwen2'"),
        ({"head_dim": 16}, "head_dim = hidden_size / num_attention_heads"),
        ({"tie_word_embeddings": True}, "tied embeddings"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "SiLU-gated"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ],
)
def test_model_args_refuse_what_gpt_fast_cannot_express(change, expected):
    with pytest.raises(gptfast_checkpoint.ModelUnsupported, match=expected.replace("(", r"\(").replace(")", r"\)")):
        gptfast_checkpoint.model_args({**ARCHITECTURES["tiny-mistral"], **change})


def test_registering_puts_the_args_under_the_folders_exact_name(tmp_path):
    # stands for gpt-fast's model module and its table
    gpt_fast_model = SimpleNamespace(transformer_configs={"7B": {"n_layer": 32}, "Mistral-7B": {"vocab_size": 32000}})

    folder = tmp_path / "shisa-7b-v1-0123456789abcdef"
    folder.mkdir()
    (folder / gptfast_checkpoint.ARGS_FILE).write_text(
        json.dumps({"name": folder.name, "args": {"vocab_size": 120128}})
    )
    assert gptfast_checkpoint.register(gpt_fast_model, folder) == folder.name
    assert gpt_fast_model.transformer_configs[folder.name] == {"vocab_size": 120128}


# ---- names, keys and the store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shisa-7b-v1", "shisa-7b-v1"),
        ("Llama-3-8B-Instruct-int8", "llama3-8B-Instruct-i8"),
        ("stories15M chat", "st0ries15M_ch_at"),
    ],
)
def test_safe_name_holds_none_of_gpt_fasts_path_switches(name, expected):
    assert gptfast_checkpoint.safe_name(name) == expected


def test_a_store_path_with_a_switch_is_refused():
    assert gptfast_checkpoint.path_problem(Path("/data/int8-models/derived/gptfast/m/model.pth")) is not None
    assert gptfast_checkpoint.path_problem(Path("/data/store/derived/gptfast/m/model.pth")) is None


def test_cache_key_follows_checkpoint_source_args_and_torch():
    args = gptfast_checkpoint.model_args(ARCHITECTURES["tiny-mistral"])
    key = gptfast_checkpoint.cache_key("fp", "src", args, "2.11.0")
    assert len(key) == 16 and key == gptfast_checkpoint.cache_key("fp", "src", dict(args), "2.11.0")
    assert (
        len(
            {
                key,
                gptfast_checkpoint.cache_key("fp2", "src", args, "2.11.0"),
                gptfast_checkpoint.cache_key("fp", "src2", args, "2.11.0"),
                gptfast_checkpoint.cache_key("fp", "src", {**args, "vocab_size": 8}, "2.11.0"),
                gptfast_checkpoint.cache_key("fp", "src", args, "2.13.0"),
            }
        )
        == 5
    )


def test_weights_names_are_what_generate_py_recognises():
    assert gptfast_checkpoint.weights_name("bf16", 128) == "model.pth"
    assert gptfast_checkpoint.weights_name("int8", 128) == "model_int8.pth"
    # generate.py: "int4" in the path, groupsize from the second-to-last dotted part ("g128")
    name = gptfast_checkpoint.weights_name("int4", 128)
    assert "int4" in name and int(name.split(".")[-2][1:]) == 128


def test_source_home_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT_FAST_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(gptfast_checkpoint.SourceMissing, match="make setup-gptfast"):
        gptfast_checkpoint.source_home()


def test_source_commit_from_a_detached_checkout_or_a_commit_file(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("32971d3129541c5bfb4f715abc33d1c5f408d204\n")
    assert gptfast_checkpoint.source_commit(tmp_path) == "32971d3129541c5bfb4f715abc33d1c5f408d204"
    (tmp_path / ".git" / "HEAD").unlink()
    (tmp_path / "COMMIT").write_text("abc\n")
    assert gptfast_checkpoint.source_commit(tmp_path) == "abc"


def test_an_unsharded_checkpoint_gets_an_index_for_gpt_fasts_converter(tiny_model, tmp_path):
    home = tmp_path / "gpt-fast"
    for name in gptfast_checkpoint.SOURCE_FILES:  # what the cache key reads of gpt-fast's source
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(f"# {name}\n")
    model = {"path": str(tiny_model), "name": "tiny-mistral", "fingerprint": "f"}
    cache = gptfast_checkpoint.CheckpointCache(model, tmp_path / "derived", home, "2.11.0")
    assert cache.folder.parent == tmp_path / "derived" / "gptfast" and cache.folder.name.startswith("tiny-mistral-")
    links = cache._stage(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert "lm_head.weight" in index["weight_map"] and len(index["weight_map"]) == 2 + 2 * 9 + 1
    assert (tmp_path / "model.safetensors").resolve() == (tiny_model / "model.safetensors").resolve()
    assert sorted(p.name for p in links) == ["model.safetensors", "model.safetensors.index.json"]


# ---- generate.py beside the cell ---------------------------------------------------------------------------


def test_generate_py_arguments_spell_out_the_cell():
    line = gptfast_bench.arguments(
        Path("/s/m/model_int8.pth"), settings(), WORKLOAD, "cuda", {"temperature": 1.0, "top_k": 1}
    )
    pairs = dict(zip(line[0:-1:2], line[1::2], strict=False))
    assert pairs == {
        "--checkpoint_path": "/s/m/model_int8.pth",
        "--prompt": "64",
        "--max_new_tokens": "256",
        "--num_samples": "3",
        "--batch_size": "1",
        "--top_k": "1",
        "--temperature": "1.0",
        "--device": "cuda",
    }
    assert line[-1] == "--compile"
    eager = gptfast_bench.arguments(
        Path("m.pth"), settings(compile=False), WORKLOAD, "cpu", {"temperature": 1.0, "top_k": 1}
    )
    assert "--compile" not in eager and "--compile_prefill" not in eager


GENERATE_OUTPUT = """Using device=cuda
Loading model ...
Time to load model: 4.21 seconds
Compilation time: 61.37 seconds
Time for inference 1: 1.40 sec total, 182.40 tokens/sec
Bandwidth achieved: 2722.10 GB/s
FLOPS achieved: 27.22 TF/s

Time for inference 2: 1.39 sec total, 184.00 tokens/sec
Bandwidth achieved: 2746.00 GB/s
FLOPS achieved: 27.46 TF/s

==========
Batch Size: 1
Prompt Length: 64
Generated tokens: 256
Average tokens/sec: 183.20
Memory used: 16.92 GB
"""


def test_generate_py_output_is_parsed_and_set_beside_the_row():
    summary = gptfast_bench.summarise(GENERATE_OUTPUT, ["generate.py"], {"tokens_per_s": {"median": 179.536}})
    assert summary["tool"] == "gpt-fast generate.py"
    assert summary["tokens_per_s"] == 183.2
    assert summary["samples_tokens_per_s"] == [182.4, 184.0]
    assert summary["bandwidth_gb_s"] == pytest.approx(2734.05)
    assert (summary["compile_s"], summary["load_s"], summary["memory_gb"]) == (61.37, 4.21, 16.92)
    assert summary["ratio"] == pytest.approx(0.98)


def test_generate_py_without_its_summary_is_an_error():
    summary = gptfast_bench.summarise("Traceback ...\nRuntimeError: boom\n", ["generate.py"], {})
    assert summary["error"] == "no 'Average tokens/sec' line: RuntimeError: boom"


def test_notes_show_bandwidth_reference_compile_and_the_int4_path():
    result = {
        "cell": {"engine": "gptfast"},
        "engine_details": {"bandwidth_gb_s": 2690.4, "model_bytes": 14_990_000_000, "compile_s": 58.2},
        "reference": {"tool": "gpt-fast generate.py", "tokens_per_s": 183.2, "bandwidth_gb_s": 2734.0, "ratio": 0.98},
        "prepare": {"int4_packing": {"patched": True, "torch": "2.11.0+cu130", "order": "even-high"}},
    }
    assert ENGINE.notes(result) == [
        "2690 GB/s achieved (15 GB weights)",
        "generate.py 183.20 tok/s, 2734 GB/s (this row = 0.98x)",
        "compile + first run 58 s (warm-up)",
        "int4: quantize.py with uint8 packing for torch 2.11.0 (patched)",
    ]


def test_int4_packing_is_patched_from_torch_2_5():
    assert not gptfast_tool.torch_packs_bytes("2.4.1+cu121")
    assert gptfast_tool.torch_packs_bytes("2.5.0") and gptfast_tool.torch_packs_bytes("2.11.0+cu130")


def test_make_setup_gptfast_fetches_the_images_pinned_commit(repo):
    image = yaml.safe_load((repo / "images" / "gptfast" / "image.yaml").read_text())
    pinned = image["flavours"]["gpu"]["build_args"]["GPT_FAST_COMMIT"]
    assert f"GPT_FAST_COMMIT ?= {pinned}" in (repo / "Makefile").read_text()
    assert image["env"]["GPT_FAST_HOME"] == "/opt/venv/gpt-fast"
