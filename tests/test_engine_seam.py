"""The engine seam: an engine's knowledge lives in its own files, and host and cells share one contract.

* host and container agree on the result schema version and the safety variables
  (both load entrypoints/shared.py; a harness run in a real interpreter stamps
  and records them; a spec of another version fails the cell saying so);
* the shared modules name no engine; an engine's files in entrypoints/ are
  named by its description, and every file there belongs to one engine or to all;
* descriptions import nothing heavy; jobs carry what the engine adds (its
  variables, the prefixes its harness records); executors come from one dict.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner import shared
from runner.engines import ENGINES
from runner.errors import UserError
from runner.executors import EXECUTORS, ExecutorOptions, make_executor
from runner.expand import expand
from runner.images import SHARED_ENTRYPOINT_FILES
from runner.matrix import parse_matrix
from runner.session import make_job

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINTS = REPO / "entrypoints"

# Modules every engine goes through: none of them may name one.
SHARED_MODULES = [
    "runner/table.py",
    "runner/card_tables.py",
    "runner/images.py",
    "runner/build.py",
    "runner/session.py",
    "runner/results.py",
    "runner/scheduler.py",
    "runner/expand.py",
    "runner/job.py",
    "runner/shared.py",
    "runner/gpu_guard.py",
    "runner/executors/__init__.py",
    "runner/executors/local.py",
    "runner/executors/docker.py",
    "runner/executors/ray.py",
    "entrypoints/harness.py",
    "entrypoints/shared.py",
    "entrypoints/serving.py",
    "runner/serving/__init__.py",
    "runner/serving/loadgen.py",
    "runner/serving/session.py",
    "runner/serving/table.py",
    "entrypoints/side_quantiser.py",
    "entrypoints/bandwidth.py",
    "runner/roofline.py",
    "runner/compare.py",
    "runner/progress.py",
    "runner/report/charts.py",
    "runner/report/html.py",
]
# Engines of the seed table, wired or not, by every name they go by in code.
ENGINE_WORDS = r"vllm|llama[._-]?cpp|ggml|gguf|transformers|exllama|exl2|ctranslate|mlc|gpt[_-]?fast|awq|gptq"


def in_entrypoints(script: str, *args: str) -> subprocess.CompletedProcess:
    """A real interpreter started where a cell's scripts run (they import harness and shared from there)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ENTRYPOINTS,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""},
    )


def test_host_and_cell_agree_on_schema_version_and_safety_variables():
    done = in_entrypoints(
        """
        import json, harness, shared
        assert harness.RESULT_SCHEMA_VERSION is shared.RESULT_SCHEMA_VERSION
        print(json.dumps({"schema": shared.RESULT_SCHEMA_VERSION, "safety": shared.SAFETY_ENV}))
        """
    )
    assert done.returncode == 0, done.stderr
    cell_side = json.loads(done.stdout)
    assert cell_side == {"schema": shared.RESULT_SCHEMA_VERSION, "safety": shared.SAFETY_ENV}
    assert shared.FILE == ENTRYPOINTS / "shared.py"  # one file, loaded by both sides
    assert set(shared.SAFETY_ENV) == {"NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"}


FAKE_ENGINE = """
import sys
import harness

class Engine:
    def __init__(self, spec):
        self.raises = spec["cell"]["settings"].get("raises")
        self.totals = spec["cell"]["settings"].get("totals")  # seconds per generate() call, the last repeated
    def check(self):
        if self.raises:
            raise getattr(harness, self.raises)(f"{self.raises} says why")
    def load(self): pass
    def synchronize(self): pass
    def tokenize(self, text): return [1] + [ord(c) for c in text[:40]]
    def generate(self, prompts, new_tokens):
        self.runs = getattr(self, "runs", 0) + 1
        totals = self.totals or [0.5]
        return harness.Timing(totals[min(self.runs, len(totals)) - 1], 0.1, new_tokens)
    def allocator_peak(self): return None
    def versions(self): return {"engine": "fake", "engine_version": "0"}

sys.exit(harness.run(Engine, sys.argv[1:]))
"""


def run_fake_cell(tmp_path: Path, spec_changes: dict, env: dict[str, str]) -> tuple[int, dict]:
    spec = {
        "schema_version": shared.RESULT_SCHEMA_VERSION,
        "cell": {"id": "fake-cell", "engine": "fake", "gpus": [], "settings": {}},
        "model": {"path": "/nowhere"},
        "workload": {"prompt_tokens": 8, "new_tokens": 4, "batch_size": 1, "warmup": 0, "repetitions": 1},
        "recorded_env_prefixes": ["FAKEENGINE_"],
        **spec_changes,
    }
    spec_path, out = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-c", FAKE_ENGINE, "--spec", str(spec_path), "--output", str(out)],
        cwd=ENTRYPOINTS,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
    )
    return done.returncode, json.loads(out.read_text())


def test_a_cell_stamps_its_schema_and_records_safety_and_its_engines_variables(tmp_path):
    env = {**shared.SAFETY_ENV, "FAKEENGINE_KERNEL": "slow", "OTHERENGINE_KERNEL": "fast"}
    code, result = run_fake_cell(tmp_path, {}, env)
    assert code == 0 and result["status"] == "ok"
    assert result["schema_version"] == shared.RESULT_SCHEMA_VERSION
    assert result["environment"]["multi_gpu_safety_env"] == shared.SAFETY_ENV
    assert result["environment"]["engine_env"] == {"FAKEENGINE_KERNEL": "slow"}  # only the spec's prefixes


def test_a_spec_of_another_schema_fails_the_cell_saying_why(tmp_path):
    code, result = run_fake_cell(tmp_path, {"schema_version": 0}, {})
    assert code == 1 and result["status"] == "failed"
    assert result["reason"].startswith("the runner wrote a schema 0 spec and this harness writes schema")
    assert "rebuild the image" in result["reason"]


@pytest.mark.parametrize("path", SHARED_MODULES)
def test_shared_modules_name_no_engine(path):
    text = (REPO / path).read_text()
    found = sorted({m.group(0) for m in re.finditer(ENGINE_WORDS, text, re.IGNORECASE)})
    assert found == [], f"{path} names engines {found}: move that knowledge into the engine's description"


def test_every_entrypoint_file_belongs_to_one_engine_or_to_all():
    owners: dict[str, list[str]] = {}
    for engine in ENGINES.values():
        for name in engine.files:
            assert (ENTRYPOINTS / name).is_file(), f"{engine.name} names entrypoints/{name}, which does not exist"
            owners.setdefault(name, []).append(engine.name)
    assert all(len(o) == 1 for o in owners.values()), owners
    present = {p.name for p in ENTRYPOINTS.iterdir() if p.is_file()}
    assert present == set(owners) | set(SHARED_ENTRYPOINT_FILES), "a file in entrypoints/ that no engine names"


def test_descriptions_import_nothing_heavy():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, runner.engines; print(sorted(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & {"numpy", "sentencepiece", "tokenizers", "pandas", "yaml", "torch"}


def _cells(tmp_path: Path, engine: str, entry: dict) -> tuple:
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"prompt_tokens": 8, "new_tokens": 8, "warmup": 0, "repetitions": 1},
        "defaults": {"gpus": [], "timeout_s": 60},
        "engines": {engine: {"include": [entry]}},
    }
    matrix = parse_matrix(raw, tmp_path / "m.yaml")
    return matrix, expand(matrix)[0]


def test_a_job_carries_what_its_engine_adds(tmp_path):
    matrix, cell = _cells(tmp_path, "vllm", {})
    job = make_job(tmp_path / "run", cell, matrix, {"path": "/nowhere"})
    assert job.env == {**shared.SAFETY_ENV, "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}
    assert job.spec["recorded_env_prefixes"] == ["VLLM_"]
    assert job.entrypoint == "run_vllm.py"
    assert job.child_result_path != job.result_path and job.child_result_path.parent == job.result_path.parent
    matrix, cell = _cells(tmp_path, "llamacpp", {})
    job = make_job(tmp_path / "run", cell, matrix, {"path": "/nowhere"})
    assert job.env == shared.SAFETY_ENV and job.spec["recorded_env_prefixes"] == ["GGML_", "LLAMA_"]


def test_executors_come_from_one_dict(tmp_path):
    assert sorted(EXECUTORS) == ["docker", "local", "ray"]
    local = make_executor("local", ExecutorOptions(tmp_path, [], python="/usr/bin/python3"))
    assert local.name == "local" and local.python == "/usr/bin/python3"
    with pytest.raises(UserError, match=r"unknown executor 'dokcer'; choose one of docker, local, ray$"):
        make_executor("dokcer", ExecutorOptions(tmp_path, []))


def test_an_unknown_executor_from_the_environment_is_one_line(runner_cli, tmp_path):
    done = runner_cli("matrix-cpu.yaml", "-o", str(tmp_path), env={**os.environ, "BENCH_EXECUTOR": "dokcer"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: BENCH_EXECUTOR=dokcer: unknown executor; choose one of auto, docker, local, ray"
    )


def test_a_setting_this_environment_cannot_run_is_unsupported_not_failed(tmp_path):
    cell = {"id": "fake-cell", "engine": "fake", "gpus": []}
    code, result = run_fake_cell(tmp_path, {"cell": {**cell, "settings": {"raises": "CellUnsupported"}}}, {})
    assert code == 1 and result["status"] == "unsupported" and result["reason"] == "CellUnsupported says why"
    code, result = run_fake_cell(tmp_path, {"cell": {**cell, "settings": {"raises": "CellInvalid"}}}, {})
    assert code == 1 and result["status"] == "failed" and result["reason"] == "CellInvalid says why"
    assert "traceback" in result  # kept in the JSON, not shown in the table


def test_adaptive_repetitions_stop_when_the_spread_is_small_or_at_the_most(tmp_path):
    cell = {"id": "fake-cell", "engine": "fake", "gpus": []}
    adaptive = {"prompt_tokens": 8, "new_tokens": 4, "batch_size": 1, "warmup": 0, "repetitions": 2}
    # steady from the start: the two fixed repetitions already agree
    code, result = run_fake_cell(
        tmp_path, {"cell": {**cell, "settings": {}}, "workload": {**adaptive, "max_repetitions": 6}}, {}
    )
    assert code == 0 and result["metrics"]["repetitions_run"] == 2
    assert result["metrics"]["repetitions_stopped"] == "spread at or under 5%"
    # a slower first run: more runs until the spread is under 5 % (4 runs: 7.27, 8, 8, 8 tok/s)
    settings = {"totals": [0.55, 0.5, 0.5]}
    workload = {**adaptive, "max_repetitions": 12}
    code, result = run_fake_cell(tmp_path, {"cell": {**cell, "settings": settings}, "workload": workload}, {})
    values = result["metrics"]["tokens_per_s"]["values"]
    assert code == 0 and len(values) == 4 and values[1:] == [8.0, 8.0, 8.0]

    def cv(v):
        return statistics.stdev(v) / statistics.fmean(v)

    assert cv(values) <= 0.05 < cv(values[:3])  # three runs were not enough, four were
    # never steady: stops at max_repetitions and says so
    settings = {"totals": [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]}
    workload = {**adaptive, "max_repetitions": 5}
    code, result = run_fake_cell(tmp_path, {"cell": {**cell, "settings": settings}, "workload": workload}, {})
    assert result["metrics"]["repetitions_run"] == 5
    assert result["metrics"]["repetitions_stopped"] == "max_repetitions 5 reached with the spread above 5%"
    # without max_repetitions: exactly `repetitions`, whatever the spread
    code, result = run_fake_cell(tmp_path, {"cell": {**cell, "settings": settings}, "workload": adaptive}, {})
    assert result["metrics"]["repetitions_run"] == 2 and result["metrics"]["repetitions_stopped"] == "fixed count"


def test_adaptive_keys_enter_the_cell_id_only_when_used(tmp_path):
    matrix, fixed = _cells(tmp_path, "transformers", {})
    assert matrix.workload.max_repetitions is None
    raw_matrix = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"prompt_tokens": 8, "new_tokens": 8, "warmup": 0, "repetitions": 1, "max_repetitions": 9},
        "defaults": {"gpus": [], "timeout_s": 60},
        "engines": {"transformers": {"include": [{}]}},
    }
    adaptive = expand(parse_matrix(raw_matrix, tmp_path / "m.yaml"))[0]
    assert adaptive.id != fixed.id
    assert "max_repetitions" not in matrix.workload.identity()
