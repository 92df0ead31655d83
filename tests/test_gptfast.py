"""gpt-fast cells for real on CPU through ``python -m runner`` (local executor) on the tiny model.

gpt-fast is a source tree fetched from its repository (GPT_FAST_HOME, or `make setup-gptfast` into
the venv); where none is here, these tests skip saying so. The weights come from gpt-fast's own
converter (with the ModelArgs adapter) and quantize.py, once per store; the bf16 cell runs eager, the
int8 cell compiled (decode_one_token through torch.compile, as generate.py --compile); int4 needs
CUDA and is 'not run here'. generate.py runs beside each row. A separate check loads the converted
weights into gpt-fast's Transformer and compares its logits with transformers' on the same checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.models import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import gptfast_checkpoint  # in-container module, found on the entrypoints path

pytestmark = pytest.mark.slow  # real gpt-fast cells on the tiny model

MATRIX = "tests/fixtures/matrices/gptfast_cpu.yaml"


@pytest.fixture(scope="module")
def gpt_fast_home() -> Path:
    try:
        home = gptfast_checkpoint.source_home()
    except gptfast_checkpoint.SourceMissing as exc:
        pytest.skip(str(exc))
    done = subprocess.run(
        [sys.executable, "-c", "import tiktoken, sentencepiece, safetensors, torch"], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"gpt-fast's imports are missing here: {done.stderr.decode().strip().splitlines()[-1]}")
    return home


def rows_by_label(folder: Path) -> dict[str, dict]:
    with open(folder / "table.csv", newline="") as handle:
        return {row["Settings"]: row for row in csv.DictReader(handle)}


def cells(folder: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    return {doc["cell"]["settings"]["precision"]: doc for doc in docs}


@pytest.fixture(scope="module")
def runs(gpt_fast_home, runner_cli, tmp_path_factory):
    """A fresh store (so the first run converts and quantises), then the same matrix into a second folder."""
    store = tmp_path_factory.mktemp("store")
    synthetic.materialise("tiny-mistral", store, log=lambda message: None)
    folders = [tmp_path_factory.mktemp("gptfast") / name for name in ("first", "second")]
    for folder in folders:
        done = runner_cli(
            MATRIX, "--executor", "local", "-o", str(folder), "--store", str(store), "--strict", timeout=1200
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.rstrip().endswith("this run: 2 ok, 1 not run here, 0 failed")
    return {"store": store, "first": folders[0], "second": folders[1]}


def test_bf16_and_int8_run_and_int4_is_not_run_here(runs):
    rows = rows_by_label(runs["first"])
    assert set(rows) == {
        "bf16 / eager",
        'int8 / torch.compile(mode="reduce-overhead")',
        'int4 groupsize=128 / torch.compile(mode="reduce-overhead")',
    }
    for label in ("bf16 / eager", 'int8 / torch.compile(mode="reduce-overhead")'):
        assert rows[label]["Status"] == "ok", rows[label]["Notes"]
        assert float(rows[label]["Avg Tok/s"]) > 0 and float(rows[label]["Max Mem (MiB)"]) > 0
        assert "GB/s achieved" in rows[label]["Notes"] and "generate.py " in rows[label]["Notes"]
    int4 = rows['int4 groupsize=128 / torch.compile(mode="reduce-overhead")']
    assert int4["Status"] == "unsupported"
    assert int4["Notes"].startswith("not run here: gpt-fast's int4 packs weights for torch's CUDA tinygemm kernel")


def test_exactly_n_tokens_prefill_apart_and_compile_in_the_warm_up(runs):
    for precision, doc in cells(runs["first"]).items():
        if precision == "int4":
            continue
        metrics, details = doc["metrics"], doc["engine_details"]
        assert len(metrics["tokens_per_s"]["values"]) == 2
        assert 0 < metrics["ttft_s"]["median"] < metrics["generation_s"]["median"]
        assert details["sampling"] == {"temperature": 1.0, "top_k": 1}
        assert details["model_bytes"] > 0 and details["bandwidth_gb_s"] > 0
        assert ("compile_s" in details) == (precision == "int8")
        assert doc["environment"]["engine"] == "gpt-fast"
        assert doc["environment"]["gpt_fast_commit"] in (
            None,
            gptfast_checkpoint.source_commit(Path(doc["environment"]["gpt_fast_home"])),
        )


def test_generate_py_runs_beside_each_row_on_the_same_weights(runs):
    for precision, doc in cells(runs["first"]).items():
        if precision == "int4":
            continue
        reference = doc["reference"]
        assert reference["tool"] == "gpt-fast generate.py", reference
        assert reference["tokens_per_s"] > 0 and len(reference["samples_tokens_per_s"]) == 2
        assert reference["ratio"] == pytest.approx(doc["metrics"]["tokens_per_s"]["median"] / reference["tokens_per_s"])
        command = reference["command"]
        assert command[command.index("--checkpoint_path") + 1] == doc["prepare"]["checkpoint"]
        assert ("--compile" in command) == (precision == "int8")


def test_weights_are_made_once_by_gpt_fasts_own_scripts(runs):
    folders = [p for p in (runs["store"] / "derived" / "gptfast").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and folders[0].name.startswith("tiny-mistral-")
    names = sorted(p.name for p in folders[0].iterdir() if not p.name.startswith("."))
    assert {"model.pth", "model_int8.pth", "tokenizer.model", "config.json", "model_args.json", "gptfast.json"} <= set(
        names
    )
    assert not [n for n in names if n.endswith(".safetensors") or "partial" in n]  # links and scratch names gone
    first, second = cells(runs["first"]), cells(runs["second"])
    built = sorted(
        (step["type"], step["by"]) for doc in first.values() for step in (doc.get("prepare") or {}).get("built", [])
    )
    assert built == [("bf16", "convert_hf_checkpoint.py"), ("int8", "quantize.py")]
    for precision in ("bf16", "int8"):
        prepare = second[precision]["prepare"]
        assert prepare["cache_hit"] is True and prepare["built"] == []
        assert prepare["model_args"]["vocab_size"] == 4096
    assert (folders[0] / "model_int8.pth").stat().st_size < (folders[0] / "model.pth").stat().st_size


LOGITS_CHECK = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import model as gf
from transformers import AutoModelForCausalLM
folder, checkpoint = sys.argv[2], sys.argv[3]
spec = json.load(open(folder + "/model_args.json"))
net = gf.Transformer(gf.ModelArgs(**spec["args"]))
net.load_state_dict(torch.load(folder + "/model.pth", weights_only=True), assign=True)
net = net.float().eval()
ids = torch.tensor([[1, 17, 300, 42, 9, 1000, 5, 77]])
with torch.no_grad():
    net.setup_caches(1, 16)
    ours = net(ids, torch.arange(ids.shape[1]))
    theirs = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()(ids).logits
print(float((ours - theirs).abs().max()), float(theirs.abs().max()))
"""


def test_converted_weights_give_transformers_logits(runs, gpt_fast_home):
    """The adapter's ModelArgs and gpt-fast's converter (q/k permuted to its rotary layout) reproduce the model."""
    folder = next(p for p in (runs["store"] / "derived" / "gptfast").iterdir() if not p.name.startswith("."))
    checkpoint = next(p for p in (runs["store"] / "synthetic").iterdir() if not p.name.startswith("."))
    done = subprocess.run(
        [sys.executable, "-c", LOGITS_CHECK, str(gpt_fast_home), str(folder), str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    difference, scale = (float(v) for v in done.stdout.split())
    assert scale > 0 and difference < 1e-3 * max(scale, 1.0)
