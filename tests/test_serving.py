"""Serving cells: the matrix's serving section, the load generator's command, and a real sweep on the CPU.

The sweep runs llama.cpp's own llama-server (the build `make setup-llamacpp`
lays out) and transformers serve on the tiny model through `python -m runner` with the local executor,
driven by AIPerf from .venv/aiperf (`make setup-aiperf`), two levels of a few
requests each; it checks every level's numbers and that no server, and nothing of AIPerf's in the
temporary folder, is left.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runner.cpuset import available, format_cpus, named, split_for_clients
from runner.errors import UserError
from runner.expand import expand
from runner.matrix import load_matrix, parse_matrix
from runner.serving.loadgen import aiperf_arguments, error_lines, find_aiperf
from runner.serving.session import server_label, serving_cells

AIPERF = Path(sys.prefix) / "aiperf" / "bin" / "aiperf"
LLAMA_SERVER = Path(sys.prefix) / "llama.cpp" / "bin" / "llama-server"


def aiperf_leftovers() -> set[Path]:
    """What AIPerf runs leave in the temporary folder: its dataset folders and its IPC folders (mkdtemp's)."""
    temp = Path(tempfile.gettempdir())
    return set(temp.glob("aiperf_mmap_*")) | {p.parent for p in temp.glob("tmp*/aiperf")}


def serving_matrix(serving: dict, **top) -> dict:
    return {"version": 1, "model": {"synthetic": "tiny-mistral"}, "serving": serving, **top}


def test_a_serving_only_matrix_expands_to_server_cells(matrices):
    matrix = load_matrix(matrices / "serving_cpu.yaml")
    assert matrix.engines == {} and matrix.serving is not None
    assert matrix.serving.sweep.levels == (1, 2) and matrix.serving.sweep.new_tokens == 16
    cell, vllm, transformers = serving_cells(matrix)
    assert cell.id.startswith("serve-llamacpp-") and cell.gpus == () and vllm.id.startswith("serve-vllm-")
    assert transformers.id.startswith("serve-transformers-") and transformers.settings["continuous_batching"]
    assert cell.settings["parallel"] is None and cell.settings["cont_batching"] is True
    assert serving_cells(matrix)[0].id == cell.id  # stable


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        ({"levels": [1, 0], "engines": {"llamacpp": {"include": [{}]}}}, "serving.levels: expected a non-empty list"),
        ({"levels": [2, 2], "engines": {"llamacpp": {"include": [{}]}}}, "serving.levels: a level is listed twice"),
        ({"levels": [1]}, "serving.engines: missing"),
        ({"engines": {"exllamav2": {"include": [{}]}}}, "serving.engines.exllamav2: ExLlamaV2 has no server"),
        ({"engines": {"llamacpp": {"include": [{"paralel": 4}]}}}, "did you mean 'parallel'?"),
        ({"ttft_p99": 5, "engines": {"llamacpp": {"include": [{}]}}}, "did you mean 'ttft_p99_ms'?"),
        (
            {"server_metrics": "yes", "engines": {"llamacpp": {"include": [{}]}}},
            "serving.server_metrics: expected true or false, got 'yes'",
        ),
    ],
)
def test_serving_section_mistakes_name_key_and_fix(serving, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?")):
        parse_matrix(serving_matrix(serving), Path("m.yaml"))


@pytest.mark.parametrize(
    ("include", "message"),
    [
        (
            {"grad_mode": "inference_mode"},
            "m.yaml: serving.engines.transformers: cell {'grad_mode': 'inference_mode'}: grad_mode: transformers "
            "serve runs generation in its own autograd context; leave grad_mode at default",
        ),
        ({"cache": "static"}, "cell {'cache': 'static'}: cache: transformers serve chooses its KV cache"),
        ({"bettertransformer": True}, "transformers serve has no BetterTransformer conversion"),
    ],
)
def test_offline_settings_a_server_cannot_honour_are_refused(include, message):
    matrix = parse_matrix(serving_matrix({"engines": {"transformers": {"include": [include]}}}), Path("m.yaml"))
    with pytest.raises(UserError, match=re.escape(message)):
        serving_cells(matrix)
    offline = parse_matrix(
        {"version": 1, "model": {"synthetic": "tiny-mistral"}, "engines": {"transformers": {"include": [include]}}},
        Path("m.yaml"),
    )
    assert expand(offline)  # the same settings stay valid offline


def test_server_settings_change_the_cell_and_its_label():
    def cell(include):
        matrix = parse_matrix(serving_matrix({"engines": {"llamacpp": {"include": [include]}}}), Path("m.yaml"))
        return serving_cells(matrix)[0]

    plain, slots = cell({"quant": "q8_0"}), cell({"quant": "q8_0", "parallel": 4})
    assert plain.id != slots.id
    assert server_label(plain) == ["q8_0"] and server_label(slots) == ["q8_0", "parallel=4"]
    no_cache = cell({"quant": "q8_0", "cache_ram_mib": 0})
    assert no_cache.id != plain.id and server_label(no_cache) == ["q8_0", "cache_ram_mib=0"]


def test_aiperf_command_asks_for_exact_lengths_and_counts_on_the_server(tmp_path):
    sweep = {"requests": 8, "warmup_requests": 2, "prompt_tokens": 64, "new_tokens": 256}
    command = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 16, sweep, {"ignore_eos": True}, tmp_path)
    text = " ".join(command)
    assert command[0] == "profile"  # the executor runs it with its aiperf (local executable or image)
    assert "--concurrency 16" in text and "--request-count 16" in text  # at least one request per slot
    assert "--isl 64 --synthetic-input-tokens-stddev 0 --osl 256 --osl-stddev 0" in text
    assert "--use-server-token-count" in text and "--streaming" in text
    assert json.loads(command[command.index("--extra-inputs") + 1]) == {"ignore_eos": True}
    assert command[command.index("--connection-reuse-strategy") + 1] == "pooled"  # as clients do
    # a prompt of its own for each of the level's requests and warm-ups, and other prompts at another level
    assert command[command.index("--num-dataset-entries") + 1] == "18"
    assert command[command.index("--dataset-sampling-strategy") + 1] == "shuffle"  # each drawn once
    other = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 4, sweep, {}, tmp_path)
    assert command[command.index("--random-seed") + 1] != other[other.index("--random-seed") + 1]
    from runner.engines import ENGINES

    assert ENGINES["llamacpp"].server.connections == "never" and ENGINES["vllm"].server.connections == "pooled"


def test_the_servers_own_counts_are_read_only_when_asked_and_go_beside_the_row(tmp_path):
    """serving.server_metrics: AIPerf reads the server's /metrics through the level (else it is told not to); the
    figures the engine names come from AIPerf's export over the measured window (a real one of llama-server's, on
    the tiny model: 6 requests of 16 tokens), and the level's Notes show them."""
    from runner.engines import ENGINES
    from runner.serving.loadgen import server_figures, server_reads
    from runner.serving.table import SERVER_COUNTS, caption, frame

    sweep = {"requests": 6, "warmup_requests": 1, "prompt_tokens": 16, "new_tokens": 16}
    plain = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 2, sweep, {}, tmp_path)
    asked = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 2, sweep, {}, tmp_path, server_metrics=True)
    assert "--no-server-metrics" in plain and "--server-metrics-formats" not in plain
    assert "--no-server-metrics" not in asked and asked[asked.index("--server-metrics-formats") + 1] == "json"

    def cell(serving):
        return serving_cells(parse_matrix(serving_matrix(serving), Path("m.yaml")))[0]

    base = {"engines": {"llamacpp": {"include": [{}]}}}
    assert cell(base).id == cell({**base, "server_metrics": False}).id != cell({**base, "server_metrics": True}).id

    export = Path(__file__).parent / "fixtures" / "aiperf" / "llama-server-metrics-export.json"
    shutil.copy(export, tmp_path / "server_metrics_export.json")
    own = server_figures(tmp_path, ENGINES["llamacpp"].server.own_figures)
    # 6 requests of 16 prompt tokens: 90 computed, 6 (each one's first, the shared BOS) from its cache
    assert own == {"generated_tokens": 96, "prompt_tokens": 90, "prompt_tokens_cached": 6, "decode_calls": 78}
    assert server_figures(tmp_path / "nowhere", ENGINES["llamacpp"].server.own_figures) == {}
    reads = server_reads(tmp_path)  # each read is served beside the load: how many, and how long one took
    assert reads == {"reads": 14, "read_ms_avg": 3.08} and server_reads(tmp_path / "nowhere") == {}
    ttft = ENGINES["vllm"].server.own_figures["ttft_ms_avg"]
    assert (ttft.metric, ttft.stat, ttft.scale) == ("vllm:time_to_first_token_seconds", "avg", 1000)

    level = {"level": 2, "status": "ok", "reason": None, "metrics": {"output_tokens_per_s": 1.0}, "server_metrics": own}
    result = {
        "cell": {"engine": "llamacpp", "software": "llama.cpp", "label": ["fp16"], "id": "serve-llamacpp-x"},
        "status": "ok", "levels": [level], "model": {"name": "tiny", "synthetic": True},
        "workload": {**sweep, "levels": [2], "server_metrics": True},
    }  # fmt: skip
    notes = frame([result], 2000).loc[0, "Notes"]
    assert notes == "server's own count: 96 tokens generated, 6 prompt tokens from its cache, 78 llama_decode calls"
    level["server_reads"] = reads
    assert frame([result], 2000).loc[0, "Notes"] == notes + ", read 14 times, 3.1 ms a read"
    assert SERVER_COUNTS in caption([result])
    assert SERVER_COUNTS not in caption([{**result, "workload": sweep}])


def test_rounds_keep_every_slot_busy_several_times_and_both_load_generators_send_the_same():
    from runner.engines import ENGINES
    from runner.serving.loadgen import level_requests, level_seed

    matrix = parse_matrix(serving_matrix({"requests": 16, "rounds": 4, "engines": {"vllm": {"include": [{}]}}}),
                          Path("m.yaml"))  # fmt: skip
    sweep = matrix.serving.sweep.__dict__
    assert [level_requests(sweep, level) for level in (1, 4, 16, 64)] == [16, 16, 64, 256]
    assert level_requests({"requests": 16}, 64) == 64  # without rounds: at least one request per slot
    aiperf = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 64, sweep, {}, Path("/tmp"))
    bench = ENGINES["vllm"].server.reference.arguments(
        "http://127.0.0.1:9", "m", "/ckpt", 64, sweep, "/r.json", level_seed(64)
    )
    assert aiperf[aiperf.index("--request-count") + 1] == bench[bench.index("--num-prompts") + 1] == "256"
    assert aiperf[aiperf.index("--random-seed") + 1] == bench[bench.index("--seed") + 1]  # each level its own prompts
    # a cell without rounds keeps the id it had before rounds existed; with rounds it is another cell
    plain = serving_matrix({"requests": 16, "engines": {"vllm": {"include": [{}]}}})
    assert "rounds" not in parse_matrix(plain, Path("m.yaml")).serving.sweep.identity()
    assert serving_cells(matrix)[0].id != serving_cells(parse_matrix(plain, Path("m.yaml")))[0].id
    with pytest.raises(UserError, match=r"serving\.rounds"):
        parse_matrix(serving_matrix({"rounds": -1, "engines": {"vllm": {"include": [{}]}}}), Path("m.yaml"))


def test_fidelity_runs_repeat_both_tools_with_prompts_of_their_own_and_the_note_shows_each_ones_spread():
    from runner.engines import ENGINES
    from runner.serving.loadgen import level_seed
    from runner.serving.session import _pair, _ratios, _spread
    from runner.serving.table import _reference_note

    def matrix(**sweep):
        return parse_matrix(serving_matrix({**sweep, "engines": {"vllm": {"include": [{}]}}}), Path("m.yaml"))

    assert matrix().serving.sweep.fidelity_runs == 1 and "fidelity_runs" not in matrix().serving.sweep.identity()
    three = matrix(fidelity_runs=3)
    assert serving_cells(three)[0].id != serving_cells(matrix())[0].id  # another cell: its server gets more load
    with pytest.raises(UserError, match=r"m\.yaml: serving\.fidelity_runs: "):
        matrix(fidelity_runs=0)
    # every run of every level sends other prompts (a prompt sent again would skip its prefill)
    seeds = [level_seed(level, run) for level in (1, 4, 16, 64, 256, 1024) for run in (1, 2, 3, 4)]
    assert len(set(seeds)) == len(seeds) and level_seed(16) == 16  # a first run's prompts as before
    sweep = three.serving.sweep.__dict__
    second = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 16, sweep, {}, Path("/tmp"), run=2)
    bench = ENGINES["vllm"].server.reference.arguments(
        "http://127.0.0.1:9", "m", "/ckpt", 16, sweep, "/r.json", level_seed(16, 2)
    )
    assert second[second.index("--random-seed") + 1] == bench[bench.index("--seed") + 1] == str(level_seed(16, 2))
    assert "--save-detailed" in bench  # every request's timings, beside the figures

    first = {"tool": "vllm bench serve", "output_tokens_per_s": 100.0, "ttft_ms_p50": 50.0}
    first.update(_ratios({"output_tokens_per_s": 99.0, "ttft_ms_p50": 40.0}, first))
    runs = [
        _pair({"output_tokens_per_s": 99.0, "ttft_ms_p50": 40.0}, first),
        _pair({"output_tokens_per_s": 101.0, "ttft_ms_p50": 60.0}, {"output_tokens_per_s": 100.0, "ttft_ms_p50": 45.0}),
        _pair({"output_tokens_per_s": 100.0, "ttft_ms_p50": 52.0}, {"output_tokens_per_s": 102.0, "ttft_ms_p50": 55.0}),
    ]
    first.update(runs=runs, **_spread(runs))
    assert first["ttft_ms_p50_ours"] == [40.0, 52.0, 60.0] and first["ttft_ms_p50_theirs"] == [45.0, 50.0, 55.0]
    assert first["ttft_p50_ratio_of_medians"] == 1.04 and first["output_ratio_of_medians"] == 1.0
    assert _reference_note(first) == (
        "vllm bench serve: 100.0 tok/s (this row 0.99x), TTFT p50 50.0 ms (0.80x); 3 runs of each: TTFT p50 "
        "40.0-60.0 ms here, 45.0-55.0 ms there (medians 1.04x), output medians 1.00x"
    )
    first["runs_error"] = "run 3: interrupted: the run was stopped"
    assert _reference_note(first).endswith("; fidelity run 3: interrupted: the run was stopped")


def test_the_summary_row_counts_the_levels_that_agree_with_the_engines_own_benchmark():
    from runner.serving.table import summary_row

    def level(n, output, ttft, medians=None):
        reference = {"tool": "vllm bench serve", "output_ratio": output, "ttft_p50_ratio": ttft}
        if medians:
            reference.update(output_ratio_of_medians=medians[0], ttft_p50_ratio_of_medians=medians[1])
        metrics = {"output_tokens_per_s": 100.0 * n, "ttft_ms_p99": 50.0}
        return {"level": n, "status": "ok", "metrics": metrics, "reference": reference}

    cell = {"software": "vLLM", "label": ["default"]}
    once = {"cell": cell, "status": "ok", "levels": [level(1, 0.99, 1.14), level(4, 1.0, 0.97), level(16, 0.94, 1.05)]}
    assert summary_row(once, 1000)["Notes"] == (
        "peak output at concurrency 16; p99 TTFT under 1000 ms up to concurrency 16; against vllm bench serve, "
        "within 5% at 2 of 3 levels in output tok/s, 2 in median TTFT"
    )
    runs = {"cell": cell, "status": "ok", "levels": [level(1, 0.99, 1.14, (1.0, 1.02)), level(4, 1.0, 0.9, (1.0, 0.9))]}
    assert summary_row(runs, 1000)["Notes"].endswith(
        "within 5% at 2 of 2 levels in output tok/s, 0 in median TTFT (2 and 1 over the fidelity runs' medians)"
    )
    failed = {"cell": cell, "status": "ok", "levels": [{**level(1, 1, 1), "reference": {"tool": "x", "error": "boom"}}]}
    assert "against" not in summary_row(failed, 1000)["Notes"]  # no figures of its own: nothing to count


@pytest.mark.parametrize("ratio", [1, 1.5, -0.1, True, "wide"])
def test_a_length_range_ratio_out_of_range_names_key_and_fix(ratio):
    with pytest.raises(UserError, match=r"m\.yaml: serving\.length_range_ratio: expected a number from 0 up to"):
        parse_matrix(
            serving_matrix({"length_range_ratio": ratio, "engines": {"vllm": {"include": [{}]}}}), Path("m.yaml")
        )


def test_a_length_range_ratio_draws_each_requests_lengths_alike_in_both_tools_and_checks_each_one():
    from runner.engines import ENGINES
    from runner.serving.loadgen import level_seed
    from runner.serving.session import _check_level
    from runner.serving.table import _lengths

    def matrix(engine="vllm", **sweep):
        section = {
            "requests": 8,
            "prompt_tokens": 64,
            "new_tokens": 256,
            **sweep,
            "engines": {engine: {"include": [{}]}},
        }
        return parse_matrix(serving_matrix(section), Path("m.yaml"))

    plain, wide = matrix(), matrix(length_range_ratio=0.5)
    assert "length_range_ratio" not in plain.serving.sweep.identity()  # cells from before it keep their ids
    assert serving_cells(wide)[0].id != serving_cells(plain)[0].id
    sweep = wide.serving.sweep.__dict__
    aiperf = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 4, sweep, {"ignore_eos": True}, Path("/tmp"))
    bench = ENGINES["vllm"].server.reference.arguments(
        "http://127.0.0.1:9", "m", "/ckpt", 4, sweep, "/r.json", level_seed(4)
    )
    assert aiperf[aiperf.index("--random-range-ratio") + 1] == bench[bench.index("--random-range-ratio") + 1] == "0.5"
    assert "--random-range-ratio" not in aiperf_arguments(
        "u", "m", "/ckpt", 4, plain.serving.sweep.__dict__, {}, Path("/t")
    )
    assert (
        "uniformly from 32-96 and 128-384 (range ratio 0.5), each request exactly the new tokens it asked"
        in _lengths(sweep)
    )
    assert _lengths(plain.serving.sweep.__dict__).startswith("64 prompt tokens, exactly 256 new tokens per request")
    # a server whose requests must name N in a field of their own cannot give each request its own length
    with pytest.raises(UserError, match=r"m\.yaml: serving\.engines\.transformers: HF Transformers's server keeps"):
        matrix("transformers", length_range_ratio=0.5)
    assert matrix("llamacpp", length_range_ratio=0.5).serving.sweep.length_range_ratio == 0.5
    # each request's count against its own max_tokens
    measured = {"errors": 0, "requests": 8.0, "output_tokens_min": 130.0, "output_tokens_max": 380.0}
    asked = {"output_tokens_asked_min": 130, "output_tokens_asked_max": 380, "output_tokens_not_as_asked_first": []}
    assert _check_level({**measured, **asked, "output_tokens_not_as_asked": 0}, 4, sweep) is None
    short = {
        **measured,
        **asked,
        "output_tokens_not_as_asked": 2,
        "output_tokens_not_as_asked_first": [(200, 7), (300, 9)],
    }
    assert (
        _check_level(short, 4, sweep)
        == "2 of 8 requests returned other than the tokens they asked for (7 for 200, 9 for 300)"
    )
    assert "no per-request records" in _check_level(measured, 4, sweep)
    assert "not exactly 256" in _check_level(measured, 4, plain.serving.sweep.__dict__)


@pytest.mark.parametrize("duration", [-1, True, "30s"])
def test_a_duration_out_of_range_names_key_and_fix(duration):
    with pytest.raises(UserError, match=r"m\.yaml: serving\.duration_s: expected seconds >= 0 per level"):
        parse_matrix(serving_matrix({"duration_s": duration, "engines": {"vllm": {"include": [{}]}}}), Path("m.yaml"))


def test_a_level_bounded_by_time_sends_what_fits_and_the_engines_benchmark_sends_as_many():
    from runner.engines import ENGINES
    from runner.serving.loadgen import level_seed, reference_sweep
    from runner.serving.session import _check_level

    def matrix(timeout_s=1800, **sweep):
        section = {"requests": 500, "levels": [1, 4], **sweep, "engines": {"vllm": {"include": [{}]}}}
        return parse_matrix(serving_matrix(section, defaults={"gpus": [], "timeout_s": timeout_s}), Path("m.yaml"))

    plain, timed = matrix(), matrix(duration_s=30)
    assert "duration_s" not in plain.serving.sweep.identity()  # cells from before it keep their ids
    assert serving_cells(timed)[0].id != serving_cells(plain)[0].id
    sweep = timed.serving.sweep.__dict__
    aiperf = aiperf_arguments("http://127.0.0.1:9", "m", "/ckpt", 4, sweep, {}, Path("/tmp"))
    text = " ".join(aiperf)
    assert "--request-count 500" in text and "--benchmark-duration 30 --benchmark-grace-period inf" in text
    assert "--benchmark-duration" not in " ".join(
        aiperf_arguments("u", "m", "/c", 4, plain.serving.sweep.__dict__, {}, Path("/t"))
    )
    # vllm bench serve takes a count: as many as AIPerf completed at that level
    bench = ENGINES["vllm"].server.reference.arguments(
        "http://127.0.0.1:9", "m", "/ckpt", 4, reference_sweep(sweep, 137.0), "/r.json", level_seed(4)
    )
    assert bench[bench.index("--num-prompts") + 1] == "137"
    assert reference_sweep(plain.serving.sweep.__dict__, 137.0) is plain.serving.sweep.__dict__
    # what fits in the time stands; fewer requests than slots does not
    measured = {"errors": 0, "requests": 37.0, "output_tokens_min": 256.0, "output_tokens_max": 256.0}
    assert _check_level(measured, 4, sweep) is None
    assert _check_level({**measured, "requests": 3.0}, 4, sweep) == "3 of 4 requests completed"
    assert _check_level(measured, 4, plain.serving.sweep.__dict__) == "37 of 500 requests completed"
    with pytest.raises(UserError, match=r"serving\.engines\.vllm: 2 levels of serving\.duration_s 600 s take at least"):
        matrix(timeout_s=1200, duration_s=600)


def test_transformers_requests_name_their_exact_length_in_a_generation_config(tmp_path):
    from runner.engines import ENGINES

    server = ENGINES["transformers"].server
    extras = server.extras(256)  # transformers serve has no ignore_eos: the request's own GenerationConfig
    assert json.loads(extras["generation_config"]) == {"max_new_tokens": 256, "min_new_tokens": 256, "do_sample": False}
    assert ENGINES["vllm"].server.extras(256) == {"ignore_eos": True}
    sweep = {"requests": 4, "warmup_requests": 0, "prompt_tokens": 16, "new_tokens": 256}
    command = aiperf_arguments("http://127.0.0.1:9", "/ckpt", "/ckpt", 1, sweep, extras, tmp_path)
    # one JSON object: AIPerf's key:value form would split the config at its commas
    sent = json.loads(command[command.index("--extra-inputs") + 1])
    assert json.loads(sent["generation_config"])["min_new_tokens"] == 256


def test_a_missing_load_generator_says_how_to_get_it():
    with pytest.raises(UserError, match="make setup-aiperf"):
        find_aiperf("/nonexistent/aiperf")


@pytest.mark.slow
def test_llamacpp_server_sweep_on_cpu(runner_cli, matrices, tmp_path, model_store):
    if not AIPERF.exists() or not LLAMA_SERVER.exists():
        pytest.skip(f"needs {AIPERF} (make setup-aiperf) and {LLAMA_SERVER} (make setup-llamacpp)")
    folder = tmp_path / "run"
    before = aiperf_leftovers()
    done = runner_cli(
        str(matrices / "serving_cpu.yaml"), "-o", str(folder), "--executor", "local", "--store", str(model_store)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "ok", result.get("reason")
    assert result["server"]["command"][0].endswith("llama-server") and result["server"]["ready_s"] > 0
    assert "--parallel" in result["server"]["command"]
    assert result["server"]["command"][result["server"]["command"].index("--parallel") + 1] == "2"  # highest level
    assert [lv["level"] for lv in result["levels"]] == [1, 2]
    for level in result["levels"]:
        m = level["metrics"]
        assert level["status"] == "ok" and m["errors"] == 0 and m["complete"]
        assert m["requests"] == 6
        assert m["output_tokens_min"] == m["output_tokens_max"] == 16  # exactly N, as the server counted
        assert m["output_tokens_per_s"] > 0 and m["requests_per_s"] > 0
        assert 0 < m["ttft_ms_p50"] <= m["ttft_ms_p99"] and m["e2e_ms_p50"] >= m["ttft_ms_p50"]
        assert level["peak_memory_mib"] > 0 and level["ended"] > level["started"]
        assert (folder / "serving" / result["cell"]["id"] / f"c{level['level']}" / "profile_export.jsonl").exists()
    assert result["loadgen"]["name"] == "aiperf"
    # what llama-server counted itself (serving.server_metrics: AIPerf read its /metrics through each level)
    from runner.engines import ENGINES

    for level in result["levels"]:
        assert set(level["server_metrics"]) <= set(ENGINES["llamacpp"].server.own_figures)
        assert level["server_reads"]["reads"] >= 1 and level["server_reads"]["read_ms_avg"] > 0
    assert sum(level["server_metrics"].get("generated_tokens", 0) for level in result["levels"]) > 0
    # the server on part of the CPUs, AIPerf (which times it) on the rest
    server_cpus, client_cpus = split_for_clients(available())
    assert result["cpus"] == {"server": format_cpus(server_cpus), "load_generators": format_cpus(client_cpus)}
    first = (folder / "serving" / result["cell"]["id"] / "c1" / "aiperf.log").read_text().splitlines()[0]
    assert first.startswith(f"$ taskset --cpu-list {format_cpus(client_cpus)} "), first
    cell_log = (folder / "logs" / f"{result['cell']['id']}.log").read_text().splitlines()[0]
    assert cell_log.startswith(f"$ taskset --cpu-list {format_cpus(server_cpus)} "), cell_log
    # every request, warm-ups and both levels included, sent a prompt of its own, and none was answered from
    # llama-server's prompt cache (it logs "n_past was set" when a whole prompt was cached)
    prompts = [
        payload["prompt"]
        for level in (1, 2)
        for entry in json.loads((folder / "serving" / result["cell"]["id"] / f"c{level}" / "inputs.json").read_text())[
            "data"
        ]
        for payload in entry["payloads"]
    ]
    assert len(prompts) == 14 and len(set(prompts)) == 14  # (1 warm-up + 6) x 2 levels
    assert "n_past was set" not in (folder / "logs" / f"{result['cell']['id']}.log").read_text()
    # llama-server's whole log is kept beside the levels: a timing line for every request it served
    assert result["server"]["log"] == f"serving/{result['cell']['id']}/server.log.gz"
    with gzip.open(folder / result["server"]["log"], "rt") as server_log:
        assert server_log.read().count("prompt eval time") == 14
    table = (folder / "serving.md").read_text()
    assert "| llama.cpp" in table and "summary" in table and "p99 TTFT under 5000 ms up to concurrency" in table
    assert "server's own count: " in table and "Server's own counts: the load generator read" in table
    if server_cpus != client_cpus:
        assert f"CPU servers: on {named(server_cpus)}; the load generators timing them on {named(client_cpus)}" in table
    assert not list((folder / "cells").glob(".*"))  # no handshake or scratch file left
    (vllm,) = [json.loads(p.read_text()) for p in (folder / "cells").glob("serve-vllm-*.json")]
    if importlib.util.find_spec("vllm") is None:  # this environment has no vLLM: the row says so, the run goes on
        assert vllm["status"] == "unsupported" and "vLLM is not importable here" in vllm["reason"]
        assert "not importable" in table
    (hf,) = [json.loads(p.read_text()) for p in (folder / "cells").glob("serve-transformers-*.json")]
    assert hf["status"] == "ok", hf.get("reason")
    assert hf["server"]["command"][1:4] == ["-m", "transformers.cli.transformers", "serve"]
    assert "--continuous-batching" in hf["server"]["command"]
    assert "generation_config" in hf["exact_length"]["request_extras"] and "min_new_tokens" in hf["exact_length"]["how"]
    for level in hf["levels"]:  # exactly N through the request's generation_config, as the server counted
        m = level["metrics"]
        assert level["status"] == "ok" and m["errors"] == 0 and m["requests"] == 6
        assert m["output_tokens_min"] == m["output_tokens_max"] == 16 and m["ttft_ms_p50"] > 0
    assert "| HF Transformers" in table
    # the serving curves beside the table, and in table.html with the serving table
    assert "![Output tok/s against concurrency](charts/serving-1-throughput.png)" in table
    assert (folder / "charts" / "serving-2-latency.png").is_file()
    page = (folder / "table.html").read_text()
    assert "<h2>Serving</h2>" in page and page.count("<svg") == 3 and "not importable" in page
    for server in (str(LLAMA_SERVER), "transformers.cli.transformers serve"):
        left = subprocess.run(["pgrep", "-f", server], capture_output=True, text=True)
        assert left.stdout == "", f"{server} left running: {left.stdout}"
    assert aiperf_leftovers() <= before  # every AIPerf run had a TMPDIR of its own, removed after it


@pytest.mark.slow
def test_llamacpp_requests_of_lengths_drawn_each_their_own_for_a_set_time_on_cpu(runner_cli, tmp_path, model_store):
    if not AIPERF.exists() or not LLAMA_SERVER.exists():
        pytest.skip(f"needs {AIPERF} (make setup-aiperf) and {LLAMA_SERVER} (make setup-llamacpp)")
    matrix = tmp_path / "ranged.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\ndefaults: {gpus: [], timeout_s: 300}\n"
        "serving:\n  levels: [2]\n  requests: 2000\n  duration_s: 2\n  warmup_requests: 1\n  prompt_tokens: 16\n"
        "  new_tokens: 24\n  length_range_ratio: 0.5\n  engines: {llamacpp: {include: [{quant: f16}]}}\n"
    )
    folder = tmp_path / "run"
    done = runner_cli(str(matrix), "-o", str(folder), "--executor", "local", "--store", str(model_store))
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "ok", result.get("reason")
    (level,) = result["levels"]
    m = level["metrics"]
    assert level["status"] == "ok" and m["errors"] == 0 and m["complete"]
    # bounded by 2 s of sending rather than by its 2000 requests (the server answers 40-140 a second here)
    assert 2 <= m["requests"] < 2000 and 1.9 <= m["duration_s"] < 10, m
    # each request asked for its own length within 12-36, and got exactly that many tokens, as the server counted
    assert 12 <= m["output_tokens_asked_min"] < m["output_tokens_asked_max"] <= 36
    assert m["output_tokens_not_as_asked"] == 0
    assert (m["output_tokens_min"], m["output_tokens_max"]) == (
        m["output_tokens_asked_min"],
        m["output_tokens_asked_max"],
    )
    assert m["prompt_tokens_min"] < m["prompt_tokens_max"]  # the prompts' lengths were drawn too
    table = (folder / "serving.md").read_text()
    assert "uniformly from 8-24 and 12-36 (range ratio 0.5)" in table
    assert "2000 requests (at least the level) or 2 s of sending, whichever ends first, per level" in table


@pytest.mark.slow
def test_a_server_that_dies_mid_sweep_keeps_the_levels_before_and_fails_the_rest_in_its_own_words(
    repo, tmp_path, model_store, runner_cli
):
    from two_node_ray import runner_process, wait_for

    if not AIPERF.exists() or not LLAMA_SERVER.exists():
        pytest.skip(f"needs {AIPERF} (make setup-aiperf) and {LLAMA_SERVER} (make setup-llamacpp)")
    matrix = tmp_path / "dies.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\ndefaults: {gpus: [], timeout_s: 600}\n"
        "serving:\n  levels: [1, 2, 4]\n  requests: 300\n  warmup_requests: 1\n  prompt_tokens: 16\n"
        "  new_tokens: 64\n  engines: {llamacpp: {include: [{quant: f16}]}}\n"
    )
    folder = tmp_path / "run"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    args = [str(matrix), "-o", str(folder), "--store", str(model_store), "--executor", "local"]
    with runner_process(repo, out, err, *args) as runner:
        # level 1 measured, level 2's load generator starting
        wait_for(lambda: "] level 2: " in out.read_text(), runner, "level 2", out)
        servers = subprocess.run(["pgrep", "-f", str(LLAMA_SERVER)], capture_output=True, text=True).stdout.split()
        assert len(servers) == 1, servers
        subprocess.run(["kill", "-KILL", servers[0]], check=True)  # the server dies under load, unannounced
        assert runner.wait(timeout=300) == 0, out.read_text()[-3000:] + err.read_text()[-3000:]
    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    died = "RuntimeError: the server exited with code -9 while it served"
    assert result["status"] == "failed" and result["reason"].startswith(died), result["reason"]
    assert result["reason"].endswith("(after levels [1, 2, 4])")
    first, second, third = result["levels"]
    assert first["status"] == "ok" and first["metrics"]["requests"] == 300 and first["peak_memory_mib"] > 0
    for level in (second, third):  # the level it died in and the one it never reached, each saying why
        assert level["status"] == "failed" and "the server had stopped (" + died in level["reason"], level
    table = (folder / "serving.md").read_text()
    assert table.count("the server had stopped (RuntimeError: the server exited with code -9") == 2
    for program in (str(LLAMA_SERVER), str(AIPERF.parent)):
        left = subprocess.run(["pgrep", "-af", program], capture_output=True, text=True)
        assert left.stdout == "", f"{program} left running: {left.stdout}"

    # the same matrix again: level 1 kept as measured, levels 2 and 4 measured on a new server (the killed run's
    # files of those levels set aside, not mixed with the new ones)
    again = runner_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "keeping levels [1] of the earlier result (failed); measuring the rest" in again.stdout, again.stdout
    assert "sweeping levels [2, 4]" in again.stdout
    resumed = json.loads(path.read_text())
    assert resumed["status"] == "ok", resumed.get("reason")
    kept, *measured = resumed["levels"]
    assert {k: v for k, v in kept.items() if k != "kept_from"} == first and kept["kept_from"] == result["started_at"]
    assert [lv["level"] for lv in measured] == [2, 4]
    assert all(
        lv["status"] == "ok" and lv["metrics"]["requests"] == 300 and lv["peak_memory_mib"] > 0 for lv in measured
    )
    assert len(list((folder / "serving" / resumed["cell"]["id"] / "earlier").glob("c2-*"))) == 1
    assert resumed["measured_with"]["loadgen"] == str(AIPERF)
    # and once more: every level measured, the same way: the result stands, no server starts
    third = runner_cli(*args)
    assert third.returncode == 0 and "kept earlier ok result" in third.stdout, third.stdout + third.stderr
    assert "server ready" not in third.stdout and json.loads(path.read_text()) == resumed


@pytest.mark.parametrize(
    ("path", "lengths"), [("matrix-serving.yaml", (64, 256)), ("matrix-serving-long.yaml", (1024, 128))]
)
def test_the_gpu_serving_matrices_have_the_issues_rows(repo, path, lengths):
    matrix = load_matrix(repo / path)
    assert matrix.engines == {} and matrix.serving.sweep.levels == (1, 4, 16, 64)
    assert (matrix.serving.sweep.requests, matrix.serving.sweep.rounds) == (16, 4)  # 16, 16, 64, 256 requests
    assert (matrix.serving.sweep.prompt_tokens, matrix.serving.sweep.new_tokens) == lengths
    assert matrix.serving.sweep.fidelity_runs == (3 if path == "matrix-serving.yaml" else 1)
    labels = {(c.engine, "; ".join(server_label(c))) for c in serving_cells(matrix)}
    issue_rows = {  # the issue's: vLLM bf16 and fp8, llama.cpp f16 and q4_k_m, transformers serve
        ("vllm", "tensor_parallel_size=1"),
        ("vllm", "tensor_parallel_size=1; quantization='fp8'"),
        ("llamacpp", "fp16; flash_attn=True"),
        ("llamacpp", "q4_k_m; flash_attn=True"),
        ("transformers", "BF16; attn_implementation=sdpa"),
    }
    assert labels == issue_rows | (
        {("llamacpp", "fp16"), ("llamacpp", "q4_k_m"), ("llamacpp", "fp16; cache_ram_mib=0")}
        if path == "matrix-serving.yaml"
        else {("llamacpp", "fp16; flash_attn=True; n_batch=2048 n_ubatch=512")}
    )
    assert all(c.gpus == (0,) for c in serving_cells(matrix))


def test_the_ranged_gpu_matrix_asks_the_fidelity_question_with_lengths_of_their_own(repo):
    sweep = load_matrix(repo / "matrix-serving-ranged.yaml").serving.sweep
    assert (sweep.prompt_tokens, sweep.new_tokens, sweep.length_range_ratio, sweep.fidelity_runs) == (64, 256, 0.25, 3)
    from runner.serving.table import _lengths

    assert "uniformly from 48-80 and 192-320" in _lengths(sweep.__dict__)  # as the file's comment says


@pytest.mark.slow
def test_a_sweep_past_its_timeout_stops_server_and_load_and_keeps_the_row(runner_cli, tmp_path, model_store):
    if not AIPERF.exists() or not LLAMA_SERVER.exists():
        pytest.skip(f"needs {AIPERF} (make setup-aiperf) and {LLAMA_SERVER} (make setup-llamacpp)")
    matrix = tmp_path / "slow.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\ndefaults: {gpus: [], timeout_s: 25}\n"
        "serving:\n  levels: [1, 2]\n  requests: 100000\n  warmup_requests: 0\n  prompt_tokens: 16\n"
        "  new_tokens: 64\n  engines: {llamacpp: {include: [{quant: f16}]}}\n"
    )
    folder = tmp_path / "run"
    started = time.monotonic()
    done = runner_cli(str(matrix), "-o", str(folder), "--executor", "local", "--store", str(model_store))
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 120  # the timeout bounded the sweep
    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "timeout", result
    (level,) = result["levels"]  # the sweep stopped at its first level; level 2 never started
    assert level["level"] == 1 and level["status"] == "timeout"
    assert "summary" in (folder / "serving.md").read_text()
    for program in (str(LLAMA_SERVER), str(AIPERF.parent)):
        left = subprocess.run(["pgrep", "-af", program], capture_output=True, text=True)
        assert left.stdout == "", f"{program} left running: {left.stdout}"


def test_aiperf_failures_are_told_in_its_own_words():
    log = (
        "$ aiperf profile --warmup-request-count 0\n"
        "╭─ Error ─────────────╮\n"
        "│ 1 validation error for CLIConfig   │\n"
        "│ warmup_request_count               │\n"
        "│   Input should be greater than 0   │\n"
        "╰─────────────────────╯\n"
    )
    said = error_lines(log)
    assert said == "1 validation error for CLIConfig warmup_request_count Input should be greater than 0"
    assert error_lines("starting\nTraceback ...\nValueError: boom\n") == "starting / Traceback ... / ValueError: boom"
    # a run whose every request failed (its server gone): its exit box, not the log path printed after it
    run = (
        "01:06:07.296 ERROR    All 3 inference request(s) failed\n"
        "╭─ AIPerf System Exit Errors ─────────╮\n"
        "│ • Service: system_controller        │\n"
        "│    Reason: All 3 inference request(s) failed. No successful │\n"
        "│            responses were collected │\n"
        "╰─────────────────────────────────────╯\n"
        "Log File:\n/tmp/run/serving/c2/logs/aiperf.log\n"
    )
    assert error_lines(run) == (
        "• Service: system_controller Reason: All 3 inference request(s) failed. No successful responses were collected"
    )


def test_vllm_rows_carry_vllms_own_serving_benchmark_on_the_same_level():
    from runner.engines import ENGINES
    from runner.serving.session import _ratios
    from runner.serving.table import _reference_note

    reference = ENGINES["vllm"].server.reference
    assert reference.name == "vllm bench serve" and reference.script in ENGINES["vllm"].files
    sweep = {"requests": 8, "warmup_requests": 2, "prompt_tokens": 64, "new_tokens": 256}
    args = reference.arguments("http://127.0.0.1:9", "m", "/ckpt", 16, sweep, "/r.json", 16)
    text = " ".join(args)
    assert "--max-concurrency 16 " in text and "--num-prompts 16 " in text and "--ignore-eos" in text
    assert "--random-input-len 64 --random-output-len 256 --random-range-ratio 0" in text
    ours = {"output_tokens_per_s": 99.0, "ttft_ms_p50": 22.0}
    theirs = {"tool": "vllm bench serve", "output_tokens_per_s": 100.0, "ttft_ms_p50": 20.0}
    theirs.update(_ratios(ours, theirs))
    assert (theirs["output_ratio"], theirs["ttft_p50_ratio"]) == (0.99, 1.1)
    assert _reference_note(theirs) == "vllm bench serve: 100.0 tok/s (this row 0.99x), TTFT p50 20.0 ms (1.10x)"
    assert ENGINES["llamacpp"].server.reference is None  # llama.cpp's server bench needs its own client


def test_the_long_fidelity_matrix_asks_both_tools_three_times_at_the_least_loaded_levels(repo):
    """matrix-serving-long-fidelity.yaml: the question results/h100/serving-long left (fp8's median TTFT 1.13-1.44x
    with one run of each tool): three runs of each, taking turns, at 1 and 4, fp8 first."""
    matrix = load_matrix(repo / "matrix-serving-long-fidelity.yaml")
    sweep = matrix.serving.sweep
    assert (sweep.prompt_tokens, sweep.new_tokens, sweep.fidelity_runs, tuple(sweep.levels)) == (1024, 128, 3, (1, 4))
    # no reads of the server's metrics: on an H200 they delayed the first measured requests of AIPerf's runs, which
    # vllm bench serve's runs did not have (results/h200/serving-long-fidelity)
    assert not sweep.server_metrics
    cells = serving_cells(matrix)
    assert [c.engine for c in cells] == ["vllm", "vllm"] and all(c.gpus == (0,) for c in cells)
    assert "quantization='fp8'" in server_label(cells[0])[-1]


def test_vllm_bench_serve_requests_keep_each_ones_timings_with_its_second_token(repo):
    """entrypoints/vllm_bench_serve.py keeps every request of --save-detailed's lists (seconds there, ms here):
    sent (relative to the first), TTFT, the first-to-second chunk gap (AIPerf's time_to_second_token), the mean
    ITL, E2E; a failed request keeps its error; lists of unequal length give none."""
    spec = importlib.util.spec_from_file_location("vllm_bench_serve", repo / "entrypoints" / "vllm_bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # vLLM is imported only when it runs
    result = {
        "start_times": [10.5, 10.0],
        "ttfts": [0.02, 0.03],
        "itls": [[0.001, 0.005, 0.006], []],
        "output_lens": [4, 0],
        "errors": ["", "connection reset"],
    }
    failed, first = module.per_request(result)  # in send order
    assert failed == {"sent_s": 0.0, "ttft_ms": 30.0, "second_token_ms": None, "itl_ms_mean": None, "e2e_ms": 30.0,
                      "output_tokens": 0, "error": "connection reset"}  # fmt: skip
    assert first["sent_s"] == 0.5 and first["ttft_ms"] == 20.0 and first["second_token_ms"] == 1.0
    assert first["itl_ms_mean"] == 4.0 and first["e2e_ms"] == 32.0 and first["output_tokens"] == 4
    assert module.per_request({**result, "ttfts": [0.02]}) == []
