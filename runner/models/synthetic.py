"""Materialise a synthetic checkpoint: a real transformers folder with random weights.

The folder holds config.json, generation_config.json, a trained tokenizer and
bf16 safetensors shards, exactly as a hub download would. It is built once
into the model store under a key that hashes everything that decides its bytes
(the architecture, the corpus, the generator code), built in a scratch folder
and renamed into place, under a file lock so concurrent runs build it once.
Its files get one fixed modification time, so its fingerprint (what derived
files are keyed by) is the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from runner.models import random_safetensors, tokenizer_train
from runner.models.architectures import ARCHITECTURES, parameter_count, parameter_shapes
from runner.models.fingerprint import settle
from runner.shared import build_once

SEED = 0
MARKER = "synthetic.json"


def store_key(architecture: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(ARCHITECTURES[architecture], sort_keys=True).encode())
    for source in (tokenizer_train.CORPUS, Path(tokenizer_train.__file__), Path(random_safetensors.__file__)):
        digest.update(source.read_bytes())
    digest.update(tokenizer_train.generator_version().encode())
    digest.update(str(SEED).encode())
    return digest.hexdigest()[:16]


def _write_configs(folder: Path, config: dict[str, Any]) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _build(folder: Path, architecture: str, key: str) -> None:
    config = ARCHITECTURES[architecture]
    _write_configs(folder, config)
    tokenizer_train.write_tokenizer(folder, config["vocab_size"], config["max_position_embeddings"])
    tensors = random_safetensors.bf16_tensors(parameter_shapes(config))
    files = random_safetensors.write_random_checkpoint(folder, tensors, SEED)
    marker = {
        "synthetic": True,
        "architecture": architecture,
        "store_key": key,
        "parameters": parameter_count(config),
        "weights": "random bf16 (sign/mantissa uniform, magnitude 2^-9..2^-6; norms 1.0)",
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    settle(folder)  # the same fingerprint on every machine


def materialise(architecture: str, store: Path, log=print) -> Path:
    """Return the folder of the synthetic checkpoint, building it if the store lacks it."""
    key = store_key(architecture)
    final = store / "synthetic" / f"{architecture}-{key}"
    count = parameter_count(ARCHITECTURES[architecture])
    build_once(
        final,
        lambda scratch: _build(scratch, architecture, key),
        marker=MARKER,
        announce=lambda: log(f"materialising synthetic {architecture} ({count / 1e6:,.1f} M parameters) into {final}"),
    )
    return final
