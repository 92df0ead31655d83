"""runner.gpu_guard on nvidia-smi's own CSV (as `--format=csv,noheader,nounits` prints it; no
driver here): parsing, when a GPU counts as busy, and waiting for memory to drain."""

from __future__ import annotations

from runner.gpu_guard import GpuGuard, GpuUse, busy_reason, parse

GPUS = "0, GPU-11111111-aaaa, 81234\n1, GPU-22222222-bbbb, 4\n"
APPS = "GPU-11111111-aaaa, 3131, 81000\nGPU-11111111-aaaa, 3132, 200\n"


def test_parse_joins_processes_to_their_gpu():
    state = parse(GPUS, APPS)
    assert state[0] == GpuUse(0, "GPU-11111111-aaaa", 81234.0, ((3131, 81000.0), (3132, 200.0)))
    assert state[1] == GpuUse(1, "GPU-22222222-bbbb", 4.0, ())


def test_not_available_values_read_as_zero():
    assert parse("0, GPU-x, [N/A]\n", "")[0].used_mib == 0.0


def test_busy_reasons():
    state = parse(GPUS, APPS)
    assert busy_reason(state, (1,)) is None
    assert busy_reason(state, (0, 1)) == "GPU 0 has 81234 MiB in use (pid 3131 (81000 MiB), pid 3132 (200 MiB))"
    assert busy_reason(state, (2,)) == "GPU 2 is not in nvidia-smi's list"
    # memory held with no process listed (a container's process, or a leaked context) is busy too
    leaked = parse("0, GPU-x, 50000\n", "")
    assert busy_reason(leaked, (0,)) == "GPU 0 has 50000 MiB in use (no process listed)"
    assert busy_reason(parse("0, GPU-x, 900\n", ""), (0,)) is None  # under BENCH_GPU_BUSY_MIB


def test_guard_waits_while_memory_drains():
    readings = iter([parse(GPUS, APPS), parse(GPUS, ""), parse("0, GPU-11111111-aaaa, 2\n", "")])
    messages: list[str] = []
    guard = GpuGuard(read=lambda: next(readings), wait_s=60, poll_s=0, log=messages.append)
    assert guard.wait_until_free((0,)) is None
    assert len(messages) == 1 and messages[0].startswith("waiting for GPU 0 to be free: GPU 0 has 81234 MiB")


def test_guard_without_nvidia_smi_lets_cells_run_and_says_so_once():
    messages: list[str] = []
    guard = GpuGuard(read=lambda: None, log=messages.append)
    assert guard.wait_until_free((0,)) is None
    assert guard.wait_until_free((1,)) is None
    assert messages == ["note: nvidia-smi did not answer: cannot check that GPUs are free before cells"]
    assert guard.wait_until_free(()) is None  # CPU cells never ask
