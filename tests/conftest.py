"""Shared fixtures: the repository root, the matrix fixtures, a session-wide model store
holding the synthetic tiny-mistral checkpoint (built once per test session), a helper
that runs ``python -m runner`` as a subprocess the way a user does, and a real two-node
Ray cluster on this machine (tests/two_node_ray.py) for the ray executor's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.models import synthetic

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MATRICES = FIXTURES / "matrices"


# Tests of the runner's own logic use the local executor; Docker tests ask for --executor docker.
os.environ.setdefault("BENCH_EXECUTOR", "local")


def run_runner(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m runner ARGS`` from the repository root; text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ if env is None else env),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def matrices() -> Path:
    """tests/fixtures/matrices: one small matrix file per case."""
    return MATRICES


@pytest.fixture(scope="session")
def runner_cli():
    """The run_runner helper, as a fixture so test modules need not import conftest."""
    return run_runner


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store shared by the whole session, with tiny-mistral already built in it."""
    store = tmp_path_factory.mktemp("model-store")
    synthetic.materialise("tiny-mistral", store, log=lambda message: None)
    return store


@pytest.fixture(scope="session")
def gptq_quantiser() -> Path:
    """GPTQModel's Python (EXLLAMAV2_GPTQ_QUANTISER, else the venv `make setup-gptq-quantiser` makes)."""
    named = os.environ.get("EXLLAMAV2_GPTQ_QUANTISER")
    python = Path(named) if named else REPO / ".venv" / "gptq-quantiser" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no GPTQModel venv at {python}: make setup-gptq-quantiser (make test does)")
    return python


@pytest.fixture(scope="session")
def tiny_model(model_store: Path) -> Path:
    """The folder of the synthetic tiny-mistral checkpoint in the session store."""
    folder = synthetic.materialise("tiny-mistral", model_store, log=lambda message: None)
    assert (folder / synthetic.MARKER).is_file()
    return folder


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on this machine (tests/two_node_ray.py): its address."""
    pytest.importorskip("ray", reason="the ray executor's tests need Ray: pip install '.[ray]' (ray==2.60.0)")
    from two_node_ray import two_nodes

    with two_nodes() as address:
        yield address


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Docker tests run last (their order otherwise kept): CI builds their images in the background meanwhile
    (.ci/run), and a test that needs an image still being built waits for that build (runner/build.py's lock)."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)
