"""Whether this host's NVIDIA driver can run an image's CUDA, decided before the image is built or run.

A GPU image's user-space CUDA (torch's wheels, or the toolkit an engine was compiled with) needs a driver
of at least the minimum NVIDIA gives for that CUDA major under minor-version compatibility (CUDA
Compatibility guide, "Minor Version Compatibility", table 1: 11.x >= 450, 12.x >= 525, 13.x >= 580).
Each GPU flavour in images/<engine>/image.yaml says which CUDA it runs (`cuda`, and `cuda_of`: what
brings it); the image carries both as labels, and its build checks torch's CUDA against the claim. A
host with an older driver gets one line naming the image, what it needs and the fix, instead of a
"driver is too old" error deep in an engine's log after a multi-gigabyte build.
"""

from __future__ import annotations

# CUDA major -> the oldest Linux driver branch that runs it (minor-version compatibility)
MIN_DRIVER_FOR_CUDA_MAJOR = {11: 450, 12: 525, 13: 580}


def min_driver(cuda: str) -> int:
    """The oldest driver branch (its major number) that runs CUDA `cuda` ("13.0", "12.8")."""
    major = int(cuda.split(".", 1)[0])
    if major not in MIN_DRIVER_FOR_CUDA_MAJOR:
        known = ", ".join(f"{m}.x" for m in MIN_DRIVER_FOR_CUDA_MAJOR)
        raise ValueError(f"CUDA {cuda}: no known minimum driver (known: {known})")
    return MIN_DRIVER_FOR_CUDA_MAJOR[major]


def driver_branch(driver: str) -> int | None:
    """The branch of a driver version as nvidia-smi prints it ("580.159.04" -> 580), None if unreadable."""
    head = driver.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


def driver_problem(
    image: str, cuda: str, cuda_of: str, drivers: list[str], other_cudas: list[str] | tuple[str, ...] = ()
) -> str | None:
    """Why the host's driver(s) cannot run an image of this CUDA, as one line with the fix; None when they can
    (or when no driver version could be read: then the engine's own error is the best there is). other_cudas:
    the CUDA builds the image could be made on instead (--cuda); one this driver runs is named as the fix."""
    need = min_driver(cuda)
    branches = [b for b in (driver_branch(d) for d in drivers) if b is not None]
    if not branches or min(branches) >= need:
        return None
    have = ", ".join(sorted(set(drivers)))
    runnable = sorted(
        (c for c in other_cudas if min_driver(c) <= min(branches)), key=lambda c: [int(x) for x in c.split(".")]
    )
    instead = (
        f"use its CUDA {runnable[-1]} build (--cuda {runnable[-1]})"
        if runnable
        else "run these cells with --executor local in an environment built for this driver's CUDA"
    )
    return (
        f"{image} runs CUDA {cuda} ({cuda_of}), which needs NVIDIA driver {need} or newer; this host has {have}: "
        f"update the driver (CUDA {cuda.split('.')[0]}.x runs on {need}+), or {instead}"
    )
