"""Turn a matrix's model spec into a checkpoint folder every cell can read.

* ``synthetic: NAME``: built once into the model store (runner.models.synthetic);
* ``path: DIR``: a local checkpoint, used in place;
* ``id: ORG/NAME``: a hub model, fetched with huggingface_hub into its cache,
  which honours HF_HOME, HF_TOKEN and HF_HUB_OFFLINE like any HF tool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.matrix import ModelSpec
from runner.models import synthetic
from runner.models.architectures import ARCHITECTURES, parameter_count
from runner.models.fingerprint import fingerprint

DEFAULT_STORE = Path(os.environ.get("BENCH_MODEL_STORE", Path.home() / ".cache" / "inference-matrix" / "models"))
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]


def resolve_model(spec: ModelSpec, store: Path, matrix_path: Path, log=print) -> dict[str, Any]:
    """The model record cells receive: source, name, absolute path, synthetic flag, fingerprint.

    ``derived_dir`` is the store's folder for files engines make from the
    checkpoint (GGUF, converted formats), keyed there by ``fingerprint``.
    """
    record = _record(spec, store, matrix_path, log)
    record["fingerprint"] = fingerprint(Path(record["path"]))
    derived = store / "derived"
    derived.mkdir(parents=True, exist_ok=True)  # before any container mounts it, so it is the user's
    record["derived_dir"] = str(derived.resolve())
    return record


def _record(spec: ModelSpec, store: Path, matrix_path: Path, log) -> dict[str, Any]:
    if spec.synthetic:
        folder = synthetic.materialise(spec.synthetic, store, log=log)
        return {
            "source": "synthetic",
            "name": spec.synthetic,
            "path": str(folder.resolve()),
            "synthetic": True,
            "parameters": parameter_count(ARCHITECTURES[spec.synthetic]),
        }
    if spec.path:
        given = Path(spec.path).expanduser()
        folder = given if given.is_absolute() else matrix_path.parent / given
        if not folder.exists():
            raise UserError(
                f"{matrix_path}: model.path: {folder} does not exist; give a checkpoint folder (relative paths are "
                "from the matrix file's folder)"
            )
        if not (folder / "config.json").is_file():
            raise UserError(f"{matrix_path}: model.path: {folder} has no config.json; point it at a checkpoint folder")
        return {
            "source": "local",
            "name": folder.name,
            "path": str(folder.resolve()),
            "synthetic": _is_synthetic(folder),
        }
    return _hub(spec, matrix_path, log)


def _is_synthetic(folder: Path) -> bool:
    marker = folder / synthetic.MARKER
    return marker.is_file() and bool(json.loads(marker.read_text()).get("synthetic"))


def _hub(spec: ModelSpec, matrix_path: Path, log) -> dict[str, Any]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("model.id needs huggingface_hub on the host: pip install huggingface_hub") from None
    log(f"fetching {spec.id} ({spec.revision or 'default revision'}) from the hub into the HF cache")
    try:
        folder = snapshot_download(spec.id, revision=spec.revision, allow_patterns=HUB_PATTERNS)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{matrix_path}: model.id: could not fetch {spec.id!r} ({type(exc).__name__}: {first}); "
            "check the id, set HF_TOKEN for gated models, or use model.path for a local checkpoint"
        ) from None
    return {
        "source": "hub",
        "name": spec.id,
        "revision": spec.revision,
        "path": str(Path(folder).resolve()),
        "synthetic": False,
    }
