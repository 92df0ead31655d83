"""runner.models.resolve.resolve_model: synthetic, local path and hub sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.errors import UserError
from runner.matrix import ModelSpec
from runner.models.fingerprint import fingerprint
from runner.models.resolve import resolve_model


def test_synthetic_resolves_to_the_store(tiny_model, model_store, tmp_path):
    messages: list[str] = []
    model = resolve_model(ModelSpec(synthetic="tiny-mistral"), model_store, tmp_path / "m.yaml", log=messages.append)
    assert model == {
        "source": "synthetic",
        "name": "tiny-mistral",
        "path": str(tiny_model.resolve()),
        "synthetic": True,
        "parameters": 598_336,
        "fingerprint": fingerprint(tiny_model),
        "derived_dir": str((model_store / "derived").resolve()),
    }
    assert (model_store / "derived").is_dir()  # made before any container mounts it
    assert messages == []  # already built


def test_local_path_to_synthetic_folder(tiny_model, tmp_path):
    model = resolve_model(ModelSpec(path=str(tiny_model)), tmp_path / "store", tmp_path / "m.yaml")
    assert model == {
        "source": "local",
        "name": tiny_model.name,
        "path": str(tiny_model.resolve()),
        "synthetic": True,
        "fingerprint": fingerprint(tiny_model),
        "derived_dir": str((tmp_path / "store" / "derived").resolve()),
    }


def test_relative_path_is_relative_to_the_matrix_file(tiny_model, tmp_path):
    (tmp_path / "ckpt").symlink_to(tiny_model, target_is_directory=True)
    matrix_dir = tmp_path / "matrices"
    matrix_dir.mkdir()
    model = resolve_model(ModelSpec(path="../ckpt"), tmp_path / "store", matrix_dir / "m.yaml")
    assert model["source"] == "local"
    assert model["path"] == str(tiny_model.resolve())
    assert model["synthetic"] is True


def test_local_checkpoint_that_is_not_synthetic(tiny_model, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    model = resolve_model(ModelSpec(path=str(folder)), tmp_path / "store", tmp_path / "m.yaml")
    assert {k: model[k] for k in ("source", "name", "path", "synthetic")} == {
        "source": "local",
        "name": "real",
        "path": str(folder.resolve()),
        "synthetic": False,
    }
    (folder / "synthetic.json").write_text(json.dumps({"synthetic": False}))
    assert resolve_model(ModelSpec(path=str(folder)), tmp_path / "store", tmp_path / "m.yaml")["synthetic"] is False


def test_fingerprint_follows_the_checkpoint_files(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    first = fingerprint(folder)
    assert first == fingerprint(folder) and len(first) == 16
    (folder / ".lock").write_text("hidden files do not count")
    assert fingerprint(folder) == first
    (folder / "model.safetensors").write_bytes(b"y" * 11)  # new weights: new GGUFs, new conversions
    assert fingerprint(folder) != first


def test_path_without_config_is_a_user_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    matrix = tmp_path / "m.yaml"
    with pytest.raises(UserError) as caught:
        resolve_model(ModelSpec(path=str(empty)), tmp_path / "store", matrix)
    message = str(caught.value)
    assert message == f"{matrix}: model.path: {empty} has no config.json; point it at a checkpoint folder"
    assert "\n" not in message
    with pytest.raises(UserError) as caught:
        resolve_model(ModelSpec(path="no/such/ckpt"), tmp_path / "store", matrix)
    assert str(caught.value) == (
        f"{matrix}: model.path: {matrix.parent / 'no/such/ckpt'} does not exist; give a checkpoint folder "
        "(relative paths are from the matrix file's folder)"
    )


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"model\.path: .*nowhere does not exist"):
        resolve_model(ModelSpec(path="nowhere"), tmp_path / "store", tmp_path / "m.yaml")


def test_home_relative_path(tiny_model, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "tiny").symlink_to(tiny_model, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    model = resolve_model(ModelSpec(path="~/tiny"), tmp_path / "store", tmp_path / "matrices" / "m.yaml")
    assert model["path"] == str(tiny_model.resolve())


# huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when it is imported, so the hub case runs in
# a fresh interpreter that inherits the environment set here
HUB_PROBE = """
import sys
from pathlib import Path
from runner.errors import UserError
from runner.matrix import ModelSpec
from runner.models.fingerprint import fingerprint
from runner.models.resolve import resolve_model
try:
    spec = ModelSpec(id=sys.argv[1], revision="main")
    resolve_model(spec, Path(sys.argv[2]), Path("matrix.yaml"), log=lambda m: None)
except UserError as exc:
    print(exc)
    sys.exit(7)
print("resolved?!")
"""


def test_hub_id_offline_is_a_user_error(tmp_path, monkeypatch, repo):
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    hub_id = "no-such-org/no-such-model-for-tests"
    done = subprocess.run(
        [sys.executable, "-c", HUB_PROBE, hub_id, str(tmp_path / "store")],
        cwd=repo,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 7, done.stdout + done.stderr
    message = done.stdout.strip()
    assert "\n" not in message
    assert message.startswith(f"matrix.yaml: model.id: could not fetch {hub_id!r}")
    assert "HF_TOKEN" in message
    assert "model.path" in message
    assert list(hf_home.rglob("*.safetensors")) == []
