"""FlashAttention 2 in the Transformers GPU image (images/transformers/flash-attn.sh), run for real here against
flash-attn 2.8.3.post2 from PyPI built without its CUDA kernels (the same Python files as the release's wheels):
the wheel goes in beside flash-attn-4 and leaves its files as they were, a wrong release or no wheel to look
for fails the build with the line that says what to pass, and FLASH_ATTN=none is what a cell is told."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "images" / "transformers" / "flash-attn.sh"
FLASH_ATTN = "2.8.3.post2"
FLASH_ATTN_4 = "4.0.0b36"

sys.path.insert(0, str(REPO / "entrypoints"))
import run_transformers  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """flash-attn's Python package at the image's release (kernels skipped: no nvcc here) and flash-attn-4's wheel."""
    folder = tmp_path_factory.mktemp("wheels")
    env = {**os.environ, "FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "FLASH_ATTENTION_FORCE_BUILD": "TRUE"}
    for command in (
        ["wheel", "--no-build-isolation", f"flash-attn=={FLASH_ATTN}"],  # setup.py imports torch: this venv's
        ["download", "--only-binary=:all:", f"flash-attn-4=={FLASH_ATTN_4}"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pip", *command, "--no-deps", "-q", "-d" if command[0] == "download" else "-w",
             str(folder)], capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


def venv(path: Path, see_torch: bool = False) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    if see_torch:  # this interpreter's torch (a CPU build), as the image's venv sees its own
        site = subprocess.run(
            [str(path / "bin" / "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def install(path: Path, script_env: dict[str, str], wheels: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(path), "WHEELS": str(wheels), **script_env}
    return subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)


def site_of(path: Path) -> Path:
    return next((path / "lib").glob("python3*/site-packages"))


def test_the_wheel_goes_in_beside_flash_attn_4_and_leaves_its_files(wheels, tmp_path):
    fa2 = next(wheels.glob(f"flash_attn-{FLASH_ATTN}-*.whl"))
    fa4 = next(wheels.glob(f"flash_attn_4-{FLASH_ATTN_4}-*.whl"))
    with zipfile.ZipFile(fa2) as archive:  # why flash-attn-4 must be put back: flash-attn brings its own cute
        assert "flash_attn/cute/__init__.py" in archive.namelist()
    with zipfile.ZipFile(fa4) as archive:
        fa4_files = {name: archive.read(name) for name in archive.namelist() if name.startswith("flash_attn/")}
    target = venv(tmp_path / "venv")
    subprocess.run([str(target / "bin" / "pip"), "install", "-q", "--no-deps", str(fa4)], check=True, timeout=300)

    done = install(target, {"FLASH_ATTN": FLASH_ATTN, "FLASH_ATTN_WHEEL": str(fa2)}, wheels)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith(f"flash-attn: {FLASH_ATTN} (flash-attn-4 {FLASH_ATTN_4} kept)")
    site = site_of(target)
    assert all((site / name).read_bytes() == content for name, content in fa4_files.items())
    assert f'__version__ = "{FLASH_ATTN}"' in (site / "flash_attn" / "__init__.py").read_text()
    assert run_transformers.flash_attn_build(str(target)) == f"{FLASH_ATTN} from {fa2}"


def test_a_wheel_of_another_release_fails_the_build_saying_what_to_pass(wheels, tmp_path):
    fa2 = next(wheels.glob(f"flash_attn-{FLASH_ATTN}-*.whl"))
    target = venv(tmp_path / "venv")
    done = install(target, {"FLASH_ATTN": "2.8.3", "FLASH_ATTN_WHEEL": fa2.name}, wheels)  # a name: from WHEELS
    assert done.returncode == 1
    assert (
        f"images/transformers: flash-attn 2.8.3: {fa2} installed flash-attn {FLASH_ATTN}, not 2.8.3. "
        "Build with --build-arg FLASH_ATTN_WHEEL=<a flash-attn 2.8.3 wheel"
    ) in done.stderr, done.stderr
    assert "or with --build-arg FLASH_ATTN=none to build without FlashAttention 2" in done.stderr
    assert run_transformers.flash_attn_build(str(target)) is None


def test_without_a_cuda_torch_there_is_no_release_wheel_to_look_for(wheels, tmp_path):
    target = venv(tmp_path / "venv", see_torch=True)
    done = install(target, {"FLASH_ATTN": FLASH_ATTN}, wheels)
    assert done.returncode == 1
    assert "is not a CUDA build" in done.stderr, done.stderr
    assert f"images/transformers: flash-attn {FLASH_ATTN}: no prebuilt wheel to look for" in done.stderr
    assert "--build-arg FLASH_ATTN=none" in done.stderr


def test_none_builds_without_it_and_the_cell_is_told(tmp_path):
    target = venv(tmp_path / "venv")
    done = install(target, {"FLASH_ATTN": "none"}, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "flash-attn: not installed (FLASH_ATTN=none)"
    assert run_transformers.flash_attn_build(str(target)) == (
        "none: the image was built with --build-arg FLASH_ATTN=none"
    )
