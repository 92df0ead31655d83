"""``python -m runner`` end to end on CPU: the real entrypoint, the real tiny model, real processes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from runner import raw_archive
from runner.cpuset import available, format_cpus

pytestmark = pytest.mark.slow  # the CPU matrix for real: Transformers, llama.cpp and vLLM cells

FIXTURE_DIR = "tests/fixtures/matrices"
# settings that cannot run on this CPU-only machine (status unsupported, "not run here"), and the word their
# Notes must name
EXPECTED_FAILURES = {
    "BetterTransformer": "BetterTransformer",
    "flash_attention_2": "flash_attention_2 needs the flash-attn package",
    "flash_attention_4": "flash_attention_4 needs the flash-attn-4 package",
    "load_in_8bit": "bitsandbytes",
    # the dev venv has no vLLM (it runs in its image; tests/test_docker.py runs this row there)
    "tensor_parallel_size": "vLLM is not importable here",
    # CUDA-only engines and settings
    "GPTQ": "ExLlamaV2 runs on CUDA GPUs only",
    "EXL2": "ExLlamaV2 runs on CUDA GPUs only",
    "int4": "gpt-fast",
    # CTranslate2 has no float16 kernels on x86 CPUs
    "float16": "cannot compute in float16 on this cpu",
}


def listed(runner_cli, matrix: str) -> list[tuple[str, str, bool]]:
    """(cell id, label, is baseline) for each cell `--list` prints."""
    done = runner_cli(matrix, "--list", timeout=60)
    assert done.returncode == 0, done.stderr
    cells = []
    for line in done.stdout.splitlines():
        cell_id, rest = line.split("  ", 1)
        label = rest.split(": ", 1)[1].removesuffix(" (baseline)")
        cells.append((cell_id, label, line.endswith(" (baseline)")))
    return cells


def read_csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def expected_failure(label: str) -> str | None:
    # BetterTransformer rows also use flash_attention_2; the BetterTransformer check fails first
    for marker in EXPECTED_FAILURES:  # in order: BetterTransformer first
        if marker in label:
            return EXPECTED_FAILURES[marker]
    return None


@pytest.fixture(scope="module")
def cpu_run(runner_cli, model_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e-cpu") / "run"
    # --strict: only real failures count; settings this machine cannot run are not failures
    done = runner_cli("matrix-cpu.yaml", "-o", str(folder), "--store", str(model_store), "--strict", timeout=900)
    return done, folder


def test_cpu_matrix_exit_and_files(cpu_run):
    done, folder = cpu_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("table.md", "table.csv", "table.json", "run.json"):
        assert (folder / name).is_file(), name
    assert "materialising" not in done.stdout  # the session store already holds the model
    assert done.stdout.rstrip().endswith("this run: 11 ok, 9 not run here, 0 failed")
    assert f"table: {folder.resolve() / 'table.md'}" in done.stdout


def test_cpu_matrix_one_row_per_listed_cell(cpu_run, runner_cli):
    _, folder = cpu_run
    cells = listed(runner_cli, "matrix-cpu.yaml")
    assert len(cells) == 20
    table = read_csv(folder)
    assert [row["Cell"] for row in table] == [c[0] for c in cells]
    assert [row["Settings"] for row in table] == [c[1].replace("; ", " / ") for c in cells]
    as_json = json.loads((folder / "table.json").read_text())
    assert [row["Cell"] for row in as_json] == [c[0] for c in cells]
    md = (folder / "table.md").read_text()
    software = ("| HF Transformers", "| llama.cpp", "| vLLM", "| ExLlamaV2", "| gpt-fast", "| CTranslate2")
    assert sum(line.startswith(software) for line in md.splitlines()) == 2 * len(cells)
    assert "SYNTHETIC random weights" in md


def test_cpu_matrix_rows(cpu_run, runner_cli):
    _, folder = cpu_run
    cells = listed(runner_cli, "matrix-cpu.yaml")
    rows = {row["Cell"]: row for row in read_csv(folder)}
    baseline_ids = [cell_id for cell_id, _, is_base in cells if is_base]
    assert len(baseline_ids) == 1
    for cell_id, label, _ in cells:
        row = rows[cell_id]
        word = expected_failure(label)
        if word is None:
            assert row["Status"] == "ok", (label, row["Notes"])
            assert float(row["Avg Tok/s"]) > 0
            assert float(row["Max Mem (MiB)"]) > 0
            assert float(row["Speed X"]) > 0
            assert float(row["Max mem %"]) > 0
            assert row["Notes"].startswith("CPU: memory is the peak RSS of the cell's processes")
        else:
            assert row["Status"] == "unsupported", label
            assert row["Notes"].startswith("not run here: ")
            assert word in row["Notes"], (label, row["Notes"])
            for column in ("Avg Tok/s", "Max Mem (MiB)", "Speed X", "Max mem %"):
                assert row[column] == "", (label, column)
    base = rows[baseline_ids[0]]
    assert base["Baseline"] == "True"
    assert base["Settings"] == "FP32 / attn_implementation=eager"
    assert float(base["Speed X"]) == 1.0
    assert float(base["Max mem %"]) == 100.0


def test_cpu_matrix_cell_documents(cpu_run, runner_cli, repo):
    _, folder = cpu_run
    invocations = json.loads((folder / "run.json").read_text())["invocations"]
    assert len(invocations) == 1
    run = invocations[0]
    cells = listed(runner_cli, "matrix-cpu.yaml")
    assert run["cells"] == [c[0] for c in cells]
    assert run["baseline"] == next(c[0] for c in cells if c[2])
    assert run["matrix"] == "matrix-cpu.yaml"
    assert run["matrix_text"] == (repo / "matrix-cpu.yaml").read_text()
    assert run["executor"] == "local"
    assert run["command"].startswith("python -m runner matrix-cpu.yaml")
    for cell_id, label, _ in cells:
        doc = json.loads((folder / "cells" / f"{cell_id}.json").read_text())
        assert doc["schema_version"] == 1
        assert doc["cell"]["id"] == cell_id
        assert doc["cell"]["gpus"] == []
        if doc["cell"]["engine"] == "transformers":
            assert doc["environment"]["torch"]
            assert doc["environment"]["transformers"]
        elif doc["cell"]["engine"] == "llamacpp":
            assert doc["environment"]["llama_cpp_python"] == "0.3.36"
            assert doc["environment"]["gpu_offload"] is False
        assert doc["environment"]["cuda_visible_devices"] == ""
        assert doc["model"]["synthetic"] is True
        # the matrix's model, or (GPTQ cells) its synthetic GPTQ layout
        assert doc["model"]["name"] in ("tiny-mistral", "tiny-mistral (GPTQ 4-bit)")
        assert doc["memory"]["kind"] == "process-tree-peak-rss"
        assert doc["workload"]["repetitions"] == 3
        assert doc["executor"] == "local"
        assert doc["wall_s"] > 0
        assert (folder / "logs" / f"{cell_id}.log").is_file()
        assert (folder / "spec" / f"{cell_id}.json").is_file()
        # pinned with taskset to every CPU the runner may use, which the cell itself saw
        every = format_cpus(available())
        log = (folder / "logs" / f"{cell_id}.log").read_text().splitlines()[0]
        assert log.startswith(f"$ taskset --cpu-list {every} ") and doc["measured_with"]["cpus"] == every
        if expected_failure(label) is None:
            assert doc["status"] == "ok"
            assert doc["threads"]["cpus"] == list(available()) and doc["threads"]["compute"] >= 1
            if doc["cell"]["engine"] == "llamacpp":
                assert doc["threads"]["compute"] == doc["engine_details"]["n_threads"] == max(len(available()) // 2, 1)
            assert doc["exit_code"] == 0
            metrics = doc["metrics"]
            assert len(metrics["tokens_per_s"]["values"]) == doc["workload"]["repetitions"]
            assert all(v > 0 for v in metrics["tokens_per_s"]["values"])
            assert len(metrics["warmup_s"]) == doc["workload"]["warmup"]
            assert metrics["load_s"] > 0
            assert metrics["ttft_s"]["median"] > 0
        else:
            assert doc["status"] == "unsupported"
            assert doc["exit_code"] == 1
            assert doc["metrics"] == {}
            assert doc["reason"]
    # no scratch files left in cells/
    assert sorted(p.name for p in (folder / "cells").iterdir()) == sorted(f"{c[0]}.json" for c in cells)


def _outcomes(folder: Path) -> list[tuple[str, str, str, str]]:
    """Each table row's software, settings, status and, for a row that did not run, its Notes."""
    return [
        (r["Software"], r["Settings"], r["Status"], "" if r["Status"] == "ok" else r["Notes"]) for r in read_csv(folder)
    ]


def test_cpu_matrix_through_a_ray_cluster_gives_the_local_table(cpu_run, ray_cluster, runner_cli, model_store):
    """matrix-cpu.yaml through --executor ray on a real two-node cluster (tests/two_node_ray.py): the local
    executor's rows (the same settings ok, the same reasons for those this machine cannot run), each result
    naming the node that ran it, both nodes used; a rerun keeps every ok result."""
    _, local = cpu_run
    folder = local.parent / "ray"
    args = ("matrix-cpu.yaml", "--executor", "ray", "--ray-address", ray_cluster, "-o", str(folder),
            "--store", str(model_store))  # fmt: skip
    done = runner_cli(*args, "--strict", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sum(line.startswith("node ") for line in done.stdout.splitlines()) == 2, done.stdout
    assert _outcomes(folder) == _outcomes(local)
    assert done.stdout.rstrip().endswith("this run: 11 ok, 9 not run here, 0 failed")

    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    for result in results:
        assert result["executor"] == "ray" and result["node"]["executor"] == "local"
        assert result["node"]["gpus"] == [] and len(result["node"]["ray_node_id"]) == 56
        if result["status"] == "ok":
            assert result["measured_with"]["hardware"].startswith("CPU: ")
            assert result["measured_with"]["engine_environment"].startswith("local ")
            assert len(result["metrics"]["tokens_per_s"]["values"]) == 3
            log = (folder / "logs" / f"{result['cell']['id']}.log").read_text()
            assert "/inference-matrix-ray-" in log.splitlines()[0]  # the node's command line, brought back
    assert {"node_a" in r["node"]["custom_resources"] for r in results} == {True, False}  # both nodes ran cells
    # each engine computes with the threads it has with the local executor, not with Ray's OMP_NUM_THREADS=1
    local_threads = {p.name: json.loads(p.read_text()).get("threads") for p in (local / "cells").glob("*.json")}
    for result in results:
        if result["status"] == "ok":
            threads, there = result["threads"], local_threads[f"{result['cell']['id']}.json"]
            assert (threads["omp_num_threads"], threads["compute"]) == (there["omp_num_threads"], there["compute"])

    again = runner_cli(*args, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    kept = [line for line in again.stdout.splitlines() if "kept earlier ok result" in line]
    assert len(kept) == 11, again.stdout


def test_rerun_keeps_earlier_ok_results(runner_cli, model_store, tmp_path):
    matrix = f"{FIXTURE_DIR}/e2e_rerun.yaml"
    folder = tmp_path / "rerun"
    cells = listed(runner_cli, matrix)
    assert len(cells) == 2
    ids = [c[0] for c in cells]

    first = runner_cli(matrix, "-o", str(folder), "--store", str(model_store), timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.rstrip().endswith("this run: 2 ok, 0 not run here, 0 failed")
    for cell_id in ids:
        assert f"[{cell_id}] running HF Transformers" in first.stdout
    stamps = {i: (folder / "cells" / f"{i}.json").stat().st_mtime_ns for i in ids}
    results = {i: json.loads((folder / "cells" / f"{i}.json").read_text()) for i in ids}
    assert all(len(r["metrics"]["tokens_per_s"]["values"]) == 2 for r in results.values())

    second = runner_cli(matrix, "-o", str(folder), "--store", str(model_store), timeout=600)
    assert second.returncode == 0, second.stderr
    for cell_id, label, _ in cells:
        assert f"[{cell_id}] kept earlier ok result ({label})" in second.stdout
    assert "running" not in second.stdout
    assert {i: (folder / "cells" / f"{i}.json").stat().st_mtime_ns for i in ids} == stamps
    assert {i: json.loads((folder / "cells" / f"{i}.json").read_text()) for i in ids} == results
    assert [row["Cell"] for row in read_csv(folder)] == ids

    # the folder packed as committed results are (runner.raw_archive); a run into it unpacks it for good
    assert raw_archive.pack(folder) == ["logs"]

    # --force with --only re-measures just that cell; the table still shows both
    forced = runner_cli(
        matrix, "-o", str(folder), "--store", str(model_store), "--force", "--only", ids[1], timeout=600
    )
    assert forced.returncode == 0, forced.stderr
    assert not (folder / "raw.tar.xz").exists() and not (folder / ".gitignore").exists()
    assert sorted(p.name for p in (folder / "logs").iterdir()) == sorted(f"{i}.log" for i in ids)
    unpacked, forced_out = forced.stdout.split("\n", 1)
    assert unpacked == f"{folder}: raw files unpacked and raw.tar.xz removed; pack it again once finished"
    assert forced_out.startswith(f"1 cell(s) from {matrix}")
    assert f"[{ids[1]}] running HF Transformers" in forced.stdout
    assert ids[0] not in forced_out.split("Model:")[0]
    assert (folder / "cells" / f"{ids[0]}.json").stat().st_mtime_ns == stamps[ids[0]]
    assert (folder / "cells" / f"{ids[1]}.json").stat().st_mtime_ns != stamps[ids[1]]
    table = read_csv(folder)
    assert [row["Cell"] for row in table] == ids
    assert all(row["Status"] == "ok" for row in table)
    invocations = json.loads((folder / "run.json").read_text())["invocations"]
    assert [run["cells"] for run in invocations] == [ids, ids, [ids[1]]]


def test_timeout_cell_does_not_stop_the_matrix(runner_cli, model_store, tmp_path):
    matrix = f"{FIXTURE_DIR}/e2e_timeout.yaml"
    folder = tmp_path / "timeout"
    cells = listed(runner_cli, matrix)
    done = runner_cli(matrix, "-o", str(folder), "--store", str(model_store), "--strict", timeout=600)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]  # --strict: a cell did not succeed
    assert done.stdout.rstrip().endswith("this run: 1 ok, 0 not run here, 1 failed")
    table = read_csv(folder)
    assert [row["Cell"] for row in table] == [c[0] for c in cells]
    late, fine = table
    assert late["Status"] == "timeout"
    assert "no result after 1 s; the cell was killed" in late["Notes"]
    assert late["Avg Tok/s"] == "" and late["Speed X"] == ""
    assert fine["Status"] == "ok"
    assert float(fine["Avg Tok/s"]) > 0
    doc = json.loads((folder / "cells" / f"{cells[0][0]}.json").read_text())
    assert doc["status"] == "timeout"
    assert doc["exit_code"] < 0
    assert doc["cell"]["timeout_s"] == 1


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--only", "no-such-cell"],
            "error: --only no-such-cell: no cell matches; give part of a cell id, an engine (transformers (HF "
            "Transformers)) or a setting as --list shows it; its 2 cells:",
        ),
        (["--parallel", "0"], "error: --parallel: give a number >= 1"),
    ],
)
def test_bad_options_are_one_line(runner_cli, tmp_path, extra, message):
    """One line, or for a --only miss one line and then the matrix's cells, one per line."""
    folder = tmp_path / "never"
    done = runner_cli(f"{FIXTURE_DIR}/e2e_rerun.yaml", "-o", str(folder), *extra, timeout=60)
    assert done.returncode == 1
    head, *rest = done.stderr.splitlines()
    assert head == message
    assert len(rest) == (2 if "--only" in extra else 0)
    assert all(line.startswith("  transformers-") and "  [cpu]  HF Transformers: " in line for line in rest)
    assert not folder.exists()


def test_only_filters_list(runner_cli):
    done = runner_cli("matrix-cpu.yaml", "--list", "--only", "static", timeout=60)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "static KV cache" in lines[0]


def test_cell_on_another_engine_release_is_not_run_here_with_the_reason(runner_cli, model_store, tmp_path):
    """The local executor runs the installed engine: a cell naming another release is not run here."""
    import transformers

    matrix = tmp_path / "versions.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "defaults: {gpus: [], timeout_s: 300}\n"
        "engines:\n  transformers:\n    include:\n"
        f"      - {{engine_version: '{transformers.__version__}'}}\n"
        "      - {engine_version: '0.0.1'}\n"
    )
    folder = tmp_path / "run"
    done = runner_cli(str(matrix), "-o", str(folder), "--store", str(model_store), "--executor", "local", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["Settings"].split(" / ")[0]: row for row in read_csv(folder)}
    assert rows[f"HF Transformers {transformers.__version__}"]["Status"] == "ok"
    other = rows["HF Transformers 0.0.1"]
    assert other["Status"] == "unsupported"  # not a failure: that release is just not installed here
    assert other["Notes"] == (
        f"not run here: the cell asks for HF Transformers 0.0.1 and this environment has {transformers.__version__}; "
        "run it with the docker executor (one image per engine_version) or install that release"
    )


def test_a_cell_whose_checkpoint_cannot_be_made_fails_and_the_matrix_goes_on(runner_cli, tiny_model, tmp_path):
    """The synthetic AWQ checkpoint cannot be written (the store has a file where its folder goes): that cell
    is a failed row naming the error, nothing is started for it, the other cell runs."""
    store = tmp_path / "store"
    shutil.copytree(tiny_model, store / "synthetic" / tiny_model.name)
    (store / "derived").mkdir()
    (store / "derived" / "awq").write_text("not a folder")
    matrix = tmp_path / "awq.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "defaults: {gpus: [], timeout_s: 300}\n"
        "engines:\n  vllm:\n    include: [{quantization: awq}]\n"
        "  transformers:\n    include: [{dtype: fp32}]\n"
    )
    folder = tmp_path / "run"
    done = runner_cli(str(matrix), "-o", str(folder), "--store", str(store), "--executor", "local", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["Software"]: row for row in read_csv(folder)}
    assert rows["HF Transformers"]["Status"] == "ok"
    assert rows["vLLM"]["Status"] == "failed"
    assert rows["vLLM"]["Notes"].startswith("failed: could not make this cell's checkpoint: FileExistsError")
    assert not (folder / "logs" / f"{rows['vLLM']['Cell']}.log").exists()  # nothing was started


def test_batch_size_per_cell_runs_that_many_requests(runner_cli, model_store, tmp_path):
    matrix = tmp_path / "batch.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 6, warmup: 0, repetitions: 2}\n"
        "defaults: {gpus: [], timeout_s: 300}\n"
        "engines:\n  transformers:\n    axes: {dtype: [fp32], batch_size: [1, 3]}\n"
    )
    folder = tmp_path / "run"
    done = runner_cli(str(matrix), "-o", str(folder), "--store", str(model_store), "--executor", "local", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single, batched = read_csv(folder)
    assert single["Status"] == batched["Status"] == "ok"
    assert batched["Settings"].endswith(" / batch_size=3") and "batch_size" not in single["Settings"]
    result = json.loads((folder / "cells" / f"{batched['Cell']}.json").read_text())
    assert result["workload"]["batch_size"] == 3
    per_request = result["metrics"]["tokens_per_s"]["values"]
    total = result["metrics"]["total_tokens_per_s"]["values"]
    assert total == pytest.approx([3 * v for v in per_request])
    assert f"batch 3: {result['metrics']['total_tokens_per_s']['median']:.2f} tok/s in total" in batched["Notes"]
    assert "batch" not in single["Notes"]
