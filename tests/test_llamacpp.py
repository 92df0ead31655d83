"""llama.cpp cells for real on CPU through ``python -m runner`` (local executor, the llama.cpp that
`make setup-llamacpp` builds into the venv): GGUFs made by llama.cpp's own converter and quantiser
from the synthetic checkpoint, cached in the store; exactly N tokens; llama.cpp's tokenizer agrees
with transformers'; llama-bench of the same build recorded beside each cell."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runner.models import synthetic

pytestmark = pytest.mark.slow  # real llama.cpp cells on the tiny model

MATRIX = "tests/fixtures/matrices/llamacpp_cpu.yaml"


def cell_results(folder: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    return {
        doc["cell"]["settings"]["quant"] + ("/ctx16" if doc["cell"]["settings"]["n_ctx"] else ""): doc for doc in docs
    }


@pytest.fixture(scope="module")
def runs(runner_cli, tmp_path_factory):
    """A fresh store (so the first run converts), then the same matrix into a second run folder."""
    store = tmp_path_factory.mktemp("store")
    synthetic.materialise("tiny-mistral", store, log=lambda message: None)
    folders = [tmp_path_factory.mktemp("llamacpp") / name for name in ("first", "second")]
    outputs = []
    for folder in folders:
        done = runner_cli(MATRIX, "--executor", "local", "-o", str(folder), "--store", str(store), timeout=1500)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs.append(done.stdout)
    return {"store": store, "first": folders[0], "second": folders[1], "stdout": outputs}


def test_every_type_runs_and_the_small_context_fails_with_its_reason(runs):
    with open(runs["first"] / "table.csv", newline="") as handle:
        rows = {row["Settings"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"fp16", "q8_0", "q4_k_m", "q8_0 / n_ctx=16"}
    for label in ("fp16", "q8_0", "q4_k_m"):
        assert rows[label]["Status"] == "ok", rows[label]["Notes"]
        assert float(rows[label]["Avg Tok/s"]) > 0
        assert float(rows[label]["Max Mem (MiB)"]) > 0
        assert "llama-bench decode" in rows[label]["Notes"]
    assert rows["q8_0 / n_ctx=16"]["Status"] == "failed"
    assert "n_ctx 16 is smaller than prompt + new tokens (44)" in rows["q8_0 / n_ctx=16"]["Notes"]
    assert all(out.rstrip().endswith("this run: 3 ok, 0 not run here, 1 failed") for out in runs["stdout"])


def test_gguf_files_are_made_once_by_llama_cpps_own_tools(runs):
    folders = list((runs["store"] / "derived" / "gguf").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny-mistral-")
    sizes = {q: (folders[0] / f"{q}.gguf").stat().st_size for q in ("f16", "q8_0", "q4_k_m")}
    assert all((folders[0] / f"{q}.gguf").read_bytes()[:4] == b"GGUF" for q in sizes)
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]
    assert not list(folders[0].glob(".*.partial"))
    first, second = cell_results(runs["first"]), cell_results(runs["second"])
    built = sorted(
        (step["type"], step["by"]) for doc in first.values() for step in doc.get("prepare", {}).get("built", [])
    )
    assert built == [("f16", "convert_hf_to_gguf.py"), ("q4_k_m", "llama-quantize"), ("q8_0", "llama-quantize")]
    for quant in ("f16", "q8_0", "q4_k_m"):
        prepare = second[quant]["prepare"]
        assert prepare["cache_hit"] is True and prepare["built"] == []
        assert prepare["gguf"] == str(folders[0] / f"{quant}.gguf")
        assert prepare["llama_cpp_build"]["llama_cpp_python"] == "0.3.36"


def test_generation_is_exactly_n_tokens_and_tokenizers_agree(runs):
    for quant, doc in cell_results(runs["first"]).items():
        if quant.endswith("ctx16"):
            continue
        details = doc["engine_details"]
        assert details["n_vocab"] == 4096
        assert details["n_ctx"] == 256  # 24 + 20 rounded up to 256
        assert details["tokenizer_check"] == {
            "compared": True,
            "agrees": True,
            "llama_cpp_tokens": details["tokenizer_check"]["transformers_tokens"],
            "transformers_tokens": details["tokenizer_check"]["transformers_tokens"],
            "first_difference": None,
        }
        metrics = doc["metrics"]
        assert len(metrics["tokens_per_s"]["values"]) == 2
        assert metrics["ttft_s"]["median"] > 0 and metrics["decode_tokens_per_s"]["median"] > 0
        assert doc["memory"]["kind"] == "process-tree-peak-rss"
        assert doc["environment"]["engine_version"].startswith("0.3.36 (llama.cpp ")


def test_llama_bench_of_the_same_build_runs_beside_each_cell(runs):
    for quant, doc in cell_results(runs["first"]).items():
        if quant.endswith("ctx16"):
            assert "reference" not in doc
            continue
        reference = doc["reference"]
        command = reference["command"]
        assert Path(command[0]).name == "llama-bench"
        assert command[command.index("-m") + 1] == doc["prepare"]["gguf"]
        assert command[command.index("-p") + 1] == "24" and command[command.index("-n") + 1] == "20"
        assert command[command.index("-ngl") + 1] == "0"
        assert reference["decode_tokens_per_s"] > 0 and reference["prefill_tokens_per_s"] > 0
        assert reference["decode_ratio"] > 0
        # pp and tg at depths 0 and the prompt's: decode is compared with tg from the prompt's depth
        assert sorted((r["n_gen"], r["n_depth"]) for r in reference["raw"]) == [(0, 0), (0, 24), (20, 0), (20, 24)]
        assert reference["decode_depth"] == 24


GREEDY_CHECK = """
import json, sys
import run_llamacpp
from run_llamacpp import llama_cpp

llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_gpu_layers=0, verbose=False, seed=0)
prompt = llm.tokenize(b"def fibonacci(n):\\n    return", add_bos=True, special=False)
loop = run_llamacpp.GreedyLoop(llm)
ours = [loop.run(prompt, 24)[0] for _ in range(2)]
loop.close()
llm.reset()
binding = []
for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=False):
    binding.append(token)
    if len(binding) == 24:
        break
print(json.dumps({"ours": ours, "binding": binding}))
"""


def test_the_c_api_loop_gives_the_bindings_greedy_tokens(runs, repo):
    """The cell's decode loop (llama_decode + llama.cpp's greedy sampler) picks exactly the tokens the
    binding's own Llama.generate picks at temperature 0, and the same again on a second call (the KV cache
    is emptied each time, so nothing of the first call is reused)."""
    import subprocess
    import sys

    gguf = next((runs["store"] / "derived" / "gguf").iterdir()) / "q8_0.gguf"
    done = subprocess.run(
        [sys.executable, "-c", GREEDY_CHECK, str(gguf)],
        cwd=repo / "entrypoints",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(got["binding"]) == 24
    assert got["ours"] == [got["binding"], got["binding"]]
