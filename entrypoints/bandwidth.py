"""The GPU's memory bandwidth as a copy measures it: the rate a batch-1 decode can at best read weights at.

Run by the harness in a process of its own (so its CUDA context and buffers are
gone before the cell's memory is sampled), once per run folder and kind of GPU
(the runner asks for it: spec ``probe_bandwidth``). On each visible device: a
1 GiB device-to-device copy, 3 warm-up copies, then 20 timed with CUDA events;
bytes moved count the read and the write, as bandwidth tests do. Beside it the
card's nominal figure where this file knows the card. Prints one JSON object;
without torch or a CUDA device it says why instead.

Usage: python bandwidth.py [--bytes N] [--reps N]

This file runs inside an engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import argparse
import json

# nominal memory bandwidth (GB/s, vendors' figures) by a part of the device name, most specific first
NOMINAL_GB_S = (
    ("H200", 4800),
    ("H100 PCIe", 2000),
    ("H100 NVL", 3900),
    ("H100", 3350),
    ("A100-SXM4-80GB", 2039),
    ("A100 80GB PCIe", 1935),
    ("A100", 1555),
    ("L40S", 864),
    ("RTX 4090", 1008),
    ("RTX 3090", 936),
)


def nominal(name: str) -> int | None:
    return next((rate for part, rate in NOMINAL_GB_S if part in name), None)


def measure(torch, index: int, size: int, reps: int) -> dict:
    device = torch.device(f"cuda:{index}")
    source = torch.empty(size // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.device(device):
        start.record()
        for _ in range(reps):
            target.copy_(source)
        end.record()
        end.synchronize()
    seconds = start.elapsed_time(end) / 1000.0
    name = torch.cuda.get_device_name(index)
    return {
        "device": index,
        "name": name,
        "copy_gb_s": round(2 * source.numel() * 4 * reps / seconds / 1e9, 1),
        "nominal_gb_s": nominal(name),
        "method": f"torch device-to-device copy of {size / 2**30:g} GiB x {reps} (read + write), CUDA events",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch
    except ImportError as exc:
        print(json.dumps({"error": f"no torch in this environment ({exc})"}))
        return
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device visible"}))
        return
    devices = [measure(torch, i, args.bytes, args.reps) for i in range(torch.cuda.device_count())]
    print(json.dumps({"devices": devices, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
