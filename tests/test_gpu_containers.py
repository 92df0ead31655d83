"""Whether Docker can give containers GPUs here, decided before any GPU cell or GPU image build."""

from __future__ import annotations

from runner.executors.docker import gpu_container_problem

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
