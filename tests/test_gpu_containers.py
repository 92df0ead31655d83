"""Whether Docker can give containers GPUs here, decided before any GPU cell or GPU image build."""

from __future__ import annotations

import pytest

from runner.cuda_compat import driver_problem, min_driver
from runner.executors.docker import driver_problems, gpu_container_problem
from runner.images import load_specs

H200 = {0: {"name": "NVIDIA H200", "driver": "580.159.04"}}


def test_no_gpu_means_not_run_here():
    status, reason = gpu_container_problem(None, set(), False)
    assert status == "unsupported"
    assert reason == "this host has no NVIDIA GPU (nvidia-smi lists none): GPU cells need one"
    assert gpu_container_problem({}, {"nvidia"}, True)[0] == "unsupported"


def test_gpus_without_the_container_toolkit_fail_saying_how_to_install_it():
    status, reason = gpu_container_problem(H200, {"runc", "io.containerd.runc.v2"}, False)
    assert status == "failed"
    assert reason.startswith("Docker cannot give containers this host's GPUs: install the NVIDIA Container Toolkit")
    assert "nvidia-ctk runtime configure --runtime=docker" in reason and "--gpus all" in reason


def test_the_nvidia_runtime_or_its_hook_is_enough():
    assert gpu_container_problem(H200, {"runc", "nvidia"}, False) is None
    assert gpu_container_problem(H200, {"runc"}, True) is None  # --gpus through the hook Docker calls


def test_each_cuda_major_needs_its_driver_branch():
    assert min_driver("13.0") == 580 and min_driver("12.8") == 525 and min_driver("11.8") == 450
    with pytest.raises(ValueError, match=r"CUDA 10.2: no known minimum driver \(known: 11.x, 12.x, 13.x\)"):
        min_driver("10.2")


def test_a_driver_older_than_the_images_cuda_is_one_line_with_the_fix():
    line = driver_problem("images/vllm's gpu image", "13.0", "torch 2.11.0's CUDA wheels", ["570.172.08"])
    assert line == (
        "images/vllm's gpu image runs CUDA 13.0 (torch 2.11.0's CUDA wheels), which needs NVIDIA driver 580 or "
        "newer; this host has 570.172.08: update the driver (CUDA 13.x runs on 580+), or run these cells with "
        "--executor local in an environment built for this driver's CUDA"
    )
    assert driver_problem("x", "13.0", "torch", ["580.65.06"]) is None  # the branch is what counts
    assert driver_problem("x", "12.8", "nvcc 12.8", ["550.54.14"]) is None  # minor-version compatibility
    assert driver_problem("x", "13.0", "torch", []) is None  # unreadable: the engine's own error stands


def test_the_images_say_which_cuda_they_run_and_a_host_is_checked_against_them():
    specs = load_specs()
    gpu = {engine: spec for (engine, flavour), spec in specs.items() if flavour == "gpu"}
    assert gpu and all(spec.cuda and spec.cuda_of for spec in gpu.values())
    keys = {(engine, "gpu") for engine in gpu} | {("transformers", "cpu"), ("vllm", "gpu", "0.23.0")}
    on_570 = driver_problems(keys, specs, ["570.172.08"])
    assert set(on_570) == {k for k in keys if k[1] == "gpu" and specs[k[:2]].cuda.startswith("13.")}
    assert ("vllm", "gpu", "0.23.0") in on_570 and ("llamacpp", "gpu") not in on_570  # llama.cpp: CUDA 12.8
    assert driver_problems(keys, specs, ["580.159.04"]) == {}


def test_on_an_old_driver_the_fix_names_a_cuda_build_the_image_offers():
    specs = load_specs()
    keys = {("transformers", "gpu"), ("vllm", "gpu")}
    on_570 = driver_problems(keys, specs, ["570.172.08"])
    assert on_570[("transformers", "gpu")].endswith("or use its CUDA 12.8 build (--cuda 12.8)")
    assert on_570[("vllm", "gpu")].endswith("in an environment built for this driver's CUDA")  # no CUDA 12 build
    assert ("transformers", "gpu") not in driver_problems(keys, specs, ["570.172.08"], cuda="12.8")
    assert ("vllm", "gpu") in driver_problems(keys, specs, ["570.172.08"], cuda="12.8")  # does not offer it
