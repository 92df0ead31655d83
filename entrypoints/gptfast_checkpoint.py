"""gpt-fast checkpoints for gpt-fast cells, made by gpt-fast's own scripts and cached in the model store.

gpt-fast reads one ``model.pth`` in its own layout, made from a Hugging Face checkpoint by its
``scripts/convert_hf_checkpoint.py``; int8 and int4 weights come from that file through its
``quantize.py`` (``model_int8.pth``, ``model_int4.g<groupsize>.pth``). Every gpt-fast script
finds the model's shape by the checkpoint folder's name (``ModelArgs.from_name``: a fixed table
of Llama / Mistral sizes, matched by substring), which has no entry for an arbitrary model
such as shisa-7b with its 120,128-token vocabulary. The adapter here (``model_args``) derives
the ModelArgs from the checkpoint's ``config.json`` instead; gptfast_tool.py registers them
under the folder's exact name before running a gpt-fast script, so gpt-fast's own lookup
finds them (an exact name wins over its substring match).

Files live in ``<derived>/gptfast/<model>-<key>/``: the key hashes the checkpoint's
fingerprint, gpt-fast's source files, the adapter's output and torch's release (int4's packed
layout is torch's), so a second cell converts nothing; shared.build_once writes each file
under a scratch name and renames it into place under a lock. gpt-fast's scripts also choose
behaviour by substrings of the path ("int8", "int4", "llama-3", "stories"), so the folder's
name never holds them.

This file runs inside the engine's environment, imports nothing from the runner, and nothing
heavy at import (the runner's tests import its pure helpers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from shared import build_once, folder_name, run_logged

ADAPTER_VERSION = 1  # bump when model_args() changes what it derives
# gpt-fast's source files whose content decides what a conversion writes
SOURCE_FILES = ("model.py", "quantize.py", "scripts/convert_hf_checkpoint.py")
# substrings of a checkpoint path that switch gpt-fast's scripts (generate.py, quantize.py, tokenizer.py)
PATH_SWITCHES = {"int8": "i8", "int4": "i4", "llama-3": "llama3", "stories": "st0ries", "chat": "ch_at"}
CHECK_PREFIX = "GPTFAST_INT4_CHECK "  # gptfast_tool.py's line about the int4 packing it used
MARKER = "gptfast.json"  # written last: the converted folder is complete
ARGS_FILE = "model_args.json"  # {name, args}: what gptfast_tool.py registers in gpt-fast's ModelArgs table
INT4_GROUPSIZES = (32, 64, 128, 256)  # WeightOnlyInt4QuantHandler's assertion


class SourceMissing(RuntimeError):
    """No gpt-fast source tree here; the message says how to get one."""


class ModelUnsupported(ValueError):
    """The checkpoint's architecture is one gpt-fast's Transformer cannot express."""


def source_home() -> Path:
    """GPT_FAST_HOME, else <this Python's prefix>/gpt-fast (where the image and `make setup-gptfast` put it)."""
    candidates = [Path(os.environ["GPT_FAST_HOME"])] if os.environ.get("GPT_FAST_HOME") else []
    candidates.append(Path(sys.prefix) / "gpt-fast")
    for home in candidates:
        if (home / "generate.py").is_file() and (home / "scripts" / "convert_hf_checkpoint.py").is_file():
            return home
    raise SourceMissing(
        f"no gpt-fast source: {' and '.join(str(c) for c in candidates)} hold no generate.py and "
        "scripts/convert_hf_checkpoint.py; set GPT_FAST_HOME to a checkout of pytorch-labs/gpt-fast at the pinned "
        "commit (images/gptfast/image.yaml), or `make setup-gptfast`"
    )


def source_commit(home: Path) -> str | None:
    """The checkout's commit: .git/HEAD (a detached checkout, as the image makes), else a COMMIT file."""
    head = home / ".git" / "HEAD"
    if head.is_file():
        text = head.read_text().strip()
        if text.startswith("ref: "):
            ref = home / ".git" / text[5:]
            return ref.read_text().strip() if ref.is_file() else None
        return text
    marker = home / "COMMIT"
    return marker.read_text().strip() if marker.is_file() else None


def source_digest(home: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (home / name).read_bytes())
    return digest.hexdigest()[:16]


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    """gpt-fast ModelArgs fields for a Llama / Mistral-family transformers config.json.

    gpt-fast's Transformer is the Llama block: RMSNorm, rotary embeddings on interleaved pairs
    (its converter permutes q/k from the HF layout), grouped-query attention with
    head_dim = dim / n_head, a SiLU-gated MLP, no biases, and an output layer of its own.
    Anything else is refused with the reason rather than run wrong.
    """
    kind = config.get("model_type")
    if kind not in ("llama", "mistral"):
        raise ModelUnsupported(f"model_type {kind!r}: gpt-fast's Transformer is the Llama / Mistral block")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, dim // heads) or dim % heads:
        raise ModelUnsupported(
            f"head_dim {config.get('head_dim')} with hidden_size {dim} and {heads} heads: gpt-fast's Attention "
            "assumes head_dim = hidden_size / num_attention_heads"
        )
    if config.get("tie_word_embeddings"):
        raise ModelUnsupported(
            "tied embeddings: gpt-fast's converter reads lm_head.weight, which such a checkpoint does not hold"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ModelUnsupported(f"{flag}: gpt-fast's linear layers have no bias")
    if config.get("hidden_act", "silu") != "silu":
        raise ModelUnsupported(f"hidden_act {config['hidden_act']!r}: gpt-fast's FeedForward is SiLU-gated")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else None)
    args: dict[str, Any] = {
        "block_size": config.get("max_position_embeddings", 2048),
        "vocab_size": config["vocab_size"],
        "n_layer": config["num_hidden_layers"],
        "n_head": heads,
        "n_local_heads": config.get("num_key_value_heads") or heads,
        "dim": dim,
        "intermediate_size": config["intermediate_size"],
        "rope_base": float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        "norm_eps": float(config.get("rms_norm_eps", 1e-5)),
    }
    if scaling:
        args["rope_scaling"] = _rope_scaling(scaling)
    return args


def _rope_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1's rope scaling, the one kind gpt-fast's model implements."""
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ModelUnsupported(f"rope scaling {kind!r}: gpt-fast implements only Llama 3.1's ('llama3')")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return {k: scaling[k] for k in keys}


def load_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def register(gpt_fast_model: Any, folder: Path) -> str:
    """Add the ModelArgs of the checkpoint in folder to gpt-fast's table (its model module) under the folder's
    exact name, which ModelArgs.from_name(folder name) then finds before its substring match."""
    spec = json.loads((folder / ARGS_FILE).read_text())
    gpt_fast_model.transformer_configs[spec["name"]] = spec["args"]
    return spec["name"]


def safe_name(name: str) -> str:
    """A folder name that none of gpt-fast's path switches (int8, int4, llama-3, ...) can match."""
    text = folder_name(name)
    for switch, instead in PATH_SWITCHES.items():
        text = re.sub(re.escape(switch), instead, text, flags=re.IGNORECASE)
    return text


def cache_key(fingerprint: str, source: str, args: dict[str, Any], torch_version: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(source.encode())
    digest.update(json.dumps(args, sort_keys=True).encode())
    digest.update(f"adapter {ADAPTER_VERSION}; torch {torch_version}".encode())
    return digest.hexdigest()[:16]


def weights_name(precision: str, groupsize: int) -> str:
    """The file gpt-fast's quantize.py writes (label "_") and generate.py recognises by its name."""
    return {"bf16": "model.pth", "int8": "model_int8.pth", "int4": f"model_int4.g{groupsize}.pth"}[precision]


def path_problem(path: Path) -> str | None:
    """Why gpt-fast's scripts would misread this checkpoint path, or None."""
    found = [s for s in PATH_SWITCHES if s in str(path.parent).lower()]  # the folder's own name is safe_name()
    if found:
        return (
            f"the model store path {path.parent} contains {', '.join(repr(s) for s in found)}, which gpt-fast's "
            "scripts read as a setting; use a --store path without it"
        )
    return None


def tool_command(home: Path, folder: Path, action: str, *args: str) -> list[str]:
    """gptfast_tool.py running one gpt-fast step with the ModelArgs of the checkpoint in folder registered."""
    tool = Path(__file__).with_name("gptfast_tool.py")
    return [sys.executable, str(tool), "--home", str(home), "--model-args", str(folder / ARGS_FILE), action, *args]


class CheckpointCache:
    """The gpt-fast files of one HF checkpoint for one gpt-fast source and torch release."""

    def __init__(self, model: dict[str, Any], derived: Path, home: Path, torch_version: str):
        self.model_path = Path(model["path"])
        self.home = home
        self.config = load_config(self.model_path)
        self.args = model_args(self.config)
        key = cache_key(model.get("fingerprint") or str(self.model_path), source_digest(home), self.args, torch_version)
        self.name = f"{safe_name(model.get('name') or self.model_path.name)}-{key}"
        self.folder = derived / "gptfast" / self.name
        self.built: list[dict[str, Any]] = []

    def get(self, precision: str, groupsize: int) -> Path:
        """The weights file for this precision, converting (and quantising) first if the cache lacks it."""
        build_once(self.folder, self._convert, marker=MARKER)
        final = self.folder / weights_name(precision, groupsize)
        if precision != "bf16":
            build_once(final, lambda scratch: self._quantize(precision, groupsize, scratch))
        return final

    def _convert(self, scratch: Path) -> None:
        """convert_hf_checkpoint.py in a scratch folder that links the checkpoint's files (it writes model.pth
        beside them, and the checkpoint may be read-only); the links are removed afterwards."""
        links = self._stage(scratch)
        (scratch / ARGS_FILE).write_text(json.dumps({"name": self.name, "args": self.args}, indent=2) + "\n")
        script = self.home / "scripts" / "convert_hf_checkpoint.py"
        command = tool_command(
            self.home, scratch, "run", str(script), "--checkpoint_dir", str(scratch), "--model_name", self.name
        )
        seconds = run_logged("convert_hf_checkpoint.py", command, scratch / "convert.log")
        for link in links:
            link.unlink()
        shutil.copyfile(self.model_path / "tokenizer.model", scratch / "tokenizer.model")
        shutil.copyfile(self.model_path / "config.json", scratch / "config.json")
        self.built.append(_record("bf16", "convert_hf_checkpoint.py", seconds, scratch / "model.pth"))
        (scratch / MARKER).write_text(json.dumps({"name": self.name, "built": self.built[-1]}, indent=2) + "\n")

    def _stage(self, scratch: Path) -> list[Path]:
        """Links to the checkpoint's weight files and its safetensors index (written if the checkpoint is one
        unsharded model.safetensors, which gpt-fast's converter would not find)."""
        links = []
        shards = sorted(self.model_path.glob("*.safetensors")) or sorted(self.model_path.glob("pytorch_model*.bin"))
        for shard in shards:
            (scratch / shard.name).symlink_to(shard.resolve())
            links.append(scratch / shard.name)
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (self.model_path / index).is_file():
                shutil.copyfile(self.model_path / index, scratch / index)
                links.append(scratch / index)
                return links
        if [s.name for s in shards] != ["model.safetensors"]:
            raise ModelUnsupported(f"{self.model_path} has no weight index and not one model.safetensors")
        index = scratch / "model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": {name: "model.safetensors" for name in _tensor_names(shards[0])}}))
        links.append(index)
        return links

    def _quantize(self, precision: str, groupsize: int, scratch: Path) -> None:
        """quantize.py's quantize() on model.pth, with label "_partial_" so its output is not yet the cached
        name; the file is then moved to the scratch name build_once renames into place."""
        source = self.folder / "model.pth"
        label = "_partial_"
        command = tool_command(self.home, self.folder, "quantize", str(source), precision, str(groupsize), label)
        log = self.folder / f"{precision}.log"
        seconds = run_logged(f"quantize.py --mode {precision}", command, log)
        written = self.folder / weights_name(precision, groupsize).replace("model_", f"model{label}")
        checks = [line[len(CHECK_PREFIX) :] for line in log.read_text().splitlines() if line.startswith(CHECK_PREFIX)]
        if checks:  # int4: how gptfast_tool.py packed it (written before the weights are renamed into place)
            sidecar = self.folder / f"{weights_name(precision, groupsize)}.json"
            sidecar.write_text(json.dumps(json.loads(checks[-1]), indent=2) + "\n")
        os.replace(written, scratch)
        self.built.append(_record(precision, "quantize.py", seconds, scratch))


def _record(kind: str, by: str, seconds: float, path: Path) -> dict[str, Any]:
    return {"type": kind, "by": by, "seconds": round(seconds, 2), "bytes": path.stat().st_size}


def _tensor_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte length, then JSON), without loading any tensor."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    return [name for name in header if name != "__metadata__"]


def checkpoint_for(
    model: dict[str, Any], precision: str, groupsize: int, derived: Path, torch_version: str
) -> tuple[Path, dict[str, Any]]:
    """The cell's gpt-fast weights and a record of where they came from (built now or cached)."""
    home = source_home()
    cache = CheckpointCache(model, derived, home, torch_version)
    path = cache.get(precision, groupsize)
    packing = path.with_name(path.name + ".json")
    return path, {
        "int4_packing": json.loads(packing.read_text()) if packing.is_file() else None,
        "checkpoint": str(path),
        "checkpoint_bytes": path.stat().st_size,
        "precision": precision,
        "cache_hit": not cache.built,
        "built": cache.built,
        "model_args": cache.args,
        "gpt_fast_commit": source_commit(home),
        "gpt_fast_home": str(home),
    }
