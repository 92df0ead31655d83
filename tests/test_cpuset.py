"""CPU cells run on one CPU set per run (runner/cpuset.py): --cpus parsed and checked, the local executor
pins the real child process (taskset), the docker command carries --cpuset-cpus, the harness records the
set and the threads, the table's header says them and a result measured on another set is not reused."""

from __future__ import annotations

import json
import os
import sys

import pytest

from runner import cpuset
from runner.engines import ENGINES
from runner.errors import UserError
from runner.executors import LocalExecutor
from runner.executors.docker import run_command
from runner.session import cell_paths, run_cells
from runner.table import caption, cpu_threads, render

USABLE = cpuset.available()
needs_two = pytest.mark.skipif(len(USABLE) < 2, reason="pinning to a subset needs a host with two or more CPUs")


def test_cpu_lists_parse_and_format_as_taskset_writes_them():
    assert cpuset.parse_cpus("0-3,8") == (0, 1, 2, 3, 8)
    assert cpuset.parse_cpus("2, 0,1") == (0, 1, 2)
    assert cpuset.format_cpus((0, 1, 2, 3, 8)) == "0-3,8"
    assert cpuset.format_cpus([5, 0, 2, 1]) == "0-2,5"
    assert cpuset.format_cpus((7,)) == "7"
    assert (cpuset.named((7,)), cpuset.named("0-1"), cpuset.named([0, 2])) == ("CPU 7", "CPUs 0-1", "CPUs 0,2")
    for bad in ("", "a", "3-1", "0,,1", "-1", "1-"):
        with pytest.raises(ValueError):
            cpuset.parse_cpus(bad)


def test_choose_defaults_to_every_usable_cpu_and_refuses_others_in_one_line():
    assert cpuset.choose(None, (0, 1, 2, 3)) == (0, 1, 2, 3)
    assert cpuset.choose("1-2", (0, 1, 2, 3)) == (1, 2)
    with pytest.raises(UserError) as outside:
        cpuset.choose("2-5", (0, 1, 2, 3))
    assert str(outside.value) == (
        "--cpus 2-5: CPU 4-5 is not available to this runner; give CPUs among 0-3 (or leave --cpus out to use "
        "all of them)"
    )
    with pytest.raises(UserError) as garbage:
        cpuset.choose("0-x", (0, 1))
    assert str(garbage.value) == (
        "--cpus 0-x: 0-x is not a CPU number or range; give a list such as 0-3 or 0,2,4 (this runner may use 0-1)"
    )


def test_a_bad_cpus_option_is_one_line_through_the_cli(runner_cli, tmp_path):
    beyond = max(USABLE) + 1
    done = runner_cli("matrix-cpu.yaml", "--cpus", f"0,{beyond}", "-o", str(tmp_path / "run"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: --cpus 0,{beyond}: CPU {beyond} is not available to this runner; give CPUs among "
        f"{cpuset.format_cpus(USABLE)} (or leave --cpus out to use all of them)"
    ]
    assert not (tmp_path / "run").exists()


AFFINITY_SCRIPT = """\
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("--spec", required=True)
parser.add_argument("--output", required=True)
args = parser.parse_args()
spec = json.load(open(args.spec))
doc = {
    "schema_version": 1, "cell": spec["cell"], "model": spec["model"], "workload": spec["workload"],
    "status": "ok", "reason": None,
    "metrics": {"tokens_per_s": {"median": 5.0, "min": 5.0, "max": 5.0, "values": [5.0]}},
    "memory": {"kind": "process-tree-peak-rss", "peak_mib": 1.0},
    "threads": {"cpus": sorted(os.sched_getaffinity(0)), "compute": len(os.sched_getaffinity(0))},
}
json.dump(doc, open(args.output, "w"))
"""


@pytest.fixture
def pinned_run(tmp_path, monkeypatch):
    """A one-cell CPU matrix whose entrypoint reports the CPUs it was allowed to run on."""
    from runner.executors import local
    from runner.expand import expand
    from runner.matrix import parse_matrix

    folder = tmp_path / "entrypoints"
    folder.mkdir()
    (folder / "run_transformers.py").write_text(AFFINITY_SCRIPT)
    monkeypatch.setattr(local, "ENTRYPOINTS", folder)
    raw = {
        "version": 1,
        "model": {"synthetic": "tiny-mistral"},
        "workload": {"prompt_tokens": 8, "new_tokens": 8, "warmup": 0, "repetitions": 1},
        "defaults": {"gpus": [], "timeout_s": 60},
        "engines": {"transformers": {"include": [{"dtype": "fp32"}]}},
    }
    matrix = parse_matrix(raw, tmp_path / "m.yaml")
    return matrix, expand(matrix)[0], tmp_path / "run"


MODEL = {"source": "synthetic", "name": "tiny-mistral", "path": "/nowhere", "synthetic": True}


@needs_two
def test_the_local_executor_pins_the_cell_and_reuse_follows_the_cpu_set(pinned_run):
    matrix, cell, run = pinned_run
    messages: list[str] = []
    first = USABLE[-1:]
    [result] = run_cells(matrix, [cell], MODEL, run, LocalExecutor(), log=messages.append, cpus=first)
    assert result["status"] == "ok"
    assert result["threads"]["cpus"] == list(first)  # what the child itself saw
    assert result["measured_with"]["cpus"] == str(first[0])
    log = cell_paths(run, cell)["log_path"].read_text().splitlines()[0]
    assert log.startswith(f"$ taskset --cpu-list {first[0]} {sys.executable} ")
    assert f"running HF Transformers: FP32; attn_implementation=sdpa on CPU {first[0]}" in " ".join(messages)

    messages.clear()
    run_cells(matrix, [cell], MODEL, run, LocalExecutor(), log=messages.append, cpus=first)
    assert any("kept earlier ok result" in m and m.endswith(f", CPU {first[0]}") for m in messages), messages

    messages.clear()
    [again] = run_cells(matrix, [cell], MODEL, run, LocalExecutor(), log=messages.append)  # default: every CPU
    everything = cpuset.format_cpus(USABLE)
    assert f"[{cell.id}] measuring again: another CPU set (CPUs {everything} now, CPU {first[0]} then)" in messages
    assert again["threads"]["cpus"] == list(USABLE)
    assert cpu_threads(again) == f"{len(USABLE)} threads on CPUs {everything}"


def test_a_gpu_cell_is_not_pinned_and_keeps_reusing_results_without_a_cpu_set(pinned_run):
    from runner.reuse import measured_with, why_not_reuse
    from runner.session import make_job

    matrix, cell, run = pinned_run
    job = make_job(run, cell, matrix, MODEL, cpus=(0,))
    assert job.cpus == (0,)
    gpu_cell = type(cell)(cell.id, cell.engine, cell.settings, (0,), cell.timeout_s)
    assert make_job(run, gpu_cell, matrix, MODEL, cpus=(0,)).cpus == ()
    # a GPU result written before CPU sets were recorded is still reused
    old = {"status": "ok", "measured_with": measured_with(MODEL, "local", "env", "GPUs: H200; driver 1")}
    del old["measured_with"]["cpus"]
    assert why_not_reuse(old, measured_with(MODEL, "local", "env", "GPUs: H200; driver 1")) is None
    # a CPU result without one is measured again, saying why
    cpu = {"status": "ok", "measured_with": {**old["measured_with"], "hardware": "CPU: x"}}
    assert why_not_reuse(cpu, measured_with(MODEL, "local", "env", "CPU: x", "0-1")) == (
        "another CPU set (CPUs 0-1 now, none recorded then)"
    )


def test_the_docker_command_pins_a_cpu_cell_with_cpuset_cpus(pinned_run):
    from runner.session import make_job

    matrix, cell, run = pinned_run
    command = run_command(make_job(run, cell, matrix, MODEL, cpus=(0, 1, 3)), "img:1", run, "t0k3n")
    assert command[command.index("--cpuset-cpus") + 1] == "0-1,3"
    gpu_cell = type(cell)(cell.id, cell.engine, cell.settings, (0,), cell.timeout_s)
    assert "--cpuset-cpus" not in run_command(make_job(run, gpu_cell, matrix, MODEL, cpus=(0, 1)), "i", run, "t")


def _cpu_result(software_engine: str, threads: dict, engine_log: dict | None = None) -> dict:
    engine = ENGINES[software_engine]
    return {
        "cell": {
            "id": f"{software_engine}-1",
            "engine": software_engine,
            "software": engine.software,
            "label": ["default"],
            "settings": {},
            "gpus": [],
        },
        "status": "ok",
        "model": {"name": "tiny"},
        "workload": {},
        "threads": threads,
        "engine_log": engine_log or {},
        "metrics": {"tokens_per_s": {"median": 1.0, "min": 1.0, "max": 1.0, "mean": 1.0, "stdev": 0.0}},
    }


def test_the_header_names_the_threads_and_cpus_of_cpu_cells(tmp_path):
    same = [
        _cpu_result("transformers", {"cpus": [0, 1], "compute": 2}),
        _cpu_result("llamacpp", {"cpus": [0, 1], "compute": 2}),
    ]
    hardware = next(line for line in caption(same) if line.startswith("Hardware: "))
    assert hardware.endswith("; CPU cells: 2 threads on CPUs 0-1")
    mixed = [
        _cpu_result("transformers", {"cpus": [0, 1], "compute": 2}),
        _cpu_result("llamacpp", {"cpus": [0, 1], "compute": 1}),
        # vLLM's worker binds its own threads: the count comes from its log, not the harness
        _cpu_result("vllm", {"cpus": [0, 1], "compute": None}, {"omp_cpus": [[0, 1]]}),
    ]
    hardware = next(line for line in caption(mixed) if line.startswith("Hardware: "))
    assert hardware.endswith(
        "; CPU cells: 2 threads on CPUs 0-1 (HF Transformers, vLLM); 1 thread on CPUs 0-1 (llama.cpp)"
    )
    text = render(mixed, "transformers-1", tmp_path)
    details = (tmp_path / "table.md").read_text().split("Details:")[1]
    assert "| CPU threads " in details and "| 1 thread on CPUs 0-1 " in details
    assert "CPU cells: 2 threads on CPUs 0-1 (HF Transformers, vLLM)" in text


def test_the_harness_records_the_cpus_and_the_threads(tmp_path):
    """The real harness in a child started under taskset: its affinity and OMP_NUM_THREADS as the count
    where no torch is loaded and the engine names none."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(cpuset.__file__).rsplit('/runner/', 1)[0] + '/entrypoints'!r})\n"
        "import harness\n"
        "class Engine:\n"
        "    def compute_threads(self):\n"
        "        return 3, 'the engine says so'\n"
        "print(json.dumps([harness.threads_used(None), harness.threads_used(Engine())]))\n"
    )
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["taskset", "--cpu-list", str(USABLE[0]), sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    plain, own = json.loads(done.stdout)
    assert plain == {
        "cpus": [USABLE[0]],
        "omp_num_threads": "1",
        "compute": 1,
        "compute_from": "OMP_NUM_THREADS",
    }
    assert (own["compute"], own["compute_from"]) == (3, "the engine says so")


def test_a_cpu_serving_cell_leaves_part_of_the_set_to_the_load_generators_that_time_it(tmp_path):
    """A quarter of the set (2 to 8 CPUs, from its end) for the clients, the rest for the server; where a quarter
    is one CPU, the clients have it alone and share the server's; one CPU is shared. The job carries both, the
    docker tool command pins the clients, the server's command the rest."""
    split = cpuset.split_for_clients
    assert split((0, 1)) == ((0,), (0, 1)) and split((5,)) == ((5,), (5,))
    assert split((0, 1, 2, 3)) == ((0, 1, 2), (0, 1, 2, 3))
    assert split(tuple(range(8))) == (tuple(range(6)), (6, 7))
    assert split(tuple(range(16))) == (tuple(range(12)), (12, 13, 14, 15))
    assert split(tuple(range(128)))[1] == tuple(range(120, 128))  # at most 8
    from runner.executors.docker import tool_command
    from runner.matrix import parse_matrix
    from runner.serving.session import make_serving_job, serving_cells

    raw = {"version": 1, "model": {"synthetic": "tiny-mistral"}, "defaults": {"gpus": []},
           "serving": {"engines": {"llamacpp": {"include": [{}]}}}}  # fmt: skip
    matrix = parse_matrix(raw, tmp_path / "m.yaml")
    (cell,) = serving_cells(matrix)
    job = make_serving_job(tmp_path / "run", cell, matrix, MODEL, tuple(range(8)))
    assert (job.cpus, job.client_cpus) == ((0, 1, 2, 3, 4, 5), (6, 7))
    server = run_command(job, "img:1", tmp_path, "t0k3n")
    assert server[server.index("--cpuset-cpus") + 1] == "0-5"
    tool = tool_command(job, "aiperf:1", ["aiperf", "profile"], tmp_path, "n", "c")
    assert tool[tool.index("--cpuset-cpus") + 1] == "6-7"
    gpu = make_serving_job(tmp_path / "run", type(cell)(cell.id, cell.engine, cell.settings, (0,), 60), matrix,
                           MODEL, (0, 1, 2, 3))  # fmt: skip
    assert (gpu.cpus, gpu.client_cpus) == ((), ())
    assert "--cpuset-cpus" not in tool_command(gpu, "aiperf:1", ["aiperf"], tmp_path, "n", "c")


@needs_two
def test_the_local_executor_runs_a_tool_and_a_script_beside_the_cell_on_the_client_cpus(tmp_path, monkeypatch):
    from runner.executors import local
    from runner.job import Job

    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\ngrep Cpus_allowed_list /proc/self/status\n")
    tool.chmod(0o755)
    monkeypatch.setattr(local, "ENTRYPOINTS", tmp_path)
    (tmp_path / "script.py").write_text("import os; print('affinity', sorted(os.sched_getaffinity(0)))\n")
    spec = {"cell": {"id": "serve-x", "gpus": []}}
    job = Job(spec, tmp_path / "s.json", tmp_path / "c.json", tmp_path / "r.json", tmp_path / "l.log", "x.py", 60,
              {}, cpus=USABLE[:-1], client_cpus=USABLE[-1:])  # fmt: skip
    executor = LocalExecutor(tools={"tool": str(tool)})
    assert executor.run_tool(job, "tool", [], tmp_path / "tool.log", 30) == 0
    assert (tmp_path / "tool.log").read_text().split()[-1] == str(USABLE[-1])
    assert executor.run_in_cell(job, "script.py", [], tmp_path / "script.log", 30) == 0
    assert (tmp_path / "script.log").read_text().splitlines()[-1] == f"affinity [{USABLE[-1]}]"
