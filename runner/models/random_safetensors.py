"""Write random bf16 weights as sharded safetensors files, streaming, without torch.

The safetensors format is an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw bytes. numpy has
no bfloat16, so bf16 words are made directly from random bits: sign and
mantissa random, exponent drawn from 2^-9..2^-6, giving weights of magnitude
0.002 to 0.03 (the scale of a trained model's). Norm weights are 1.0, as a
freshly initialised model has them. Generation is spread over threads with one
seeded generator per chunk, so the bytes are the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BF16_ONE = 0x3F80
CHUNK_ELEMENTS = 16 * 1024 * 1024
SHARD_BYTES = 4 * 1024**3


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _random_bf16(seed: list[int], count: int) -> bytes:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, size=(count + 3) // 4, dtype=np.uint64).view(np.uint16)[:count]
    exponent = np.right_shift(words, 7)
    np.bitwise_and(exponent, 3, out=exponent)
    np.add(exponent, 0x76, out=exponent)
    np.left_shift(exponent, 7, out=exponent)
    out = np.bitwise_and(words, 0x807F)
    np.bitwise_or(out, exponent, out=out)
    return out.astype("<u2", copy=False).tobytes()


def _tensor_chunks(name: str, shape: tuple[int, ...], seed: int) -> Iterator[tuple[list[int], int]]:
    """(seed, element count) for each chunk of one tensor; deterministic per name."""
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")
    total = _numel(shape)
    for index, start in enumerate(range(0, total, CHUNK_ELEMENTS)):
        yield [seed, name_key, index], min(CHUNK_ELEMENTS, total - start)


def plan_shards(shapes: dict[str, tuple[int, ...]]) -> list[list[str]]:
    """Group tensors, in order, into shards of at most SHARD_BYTES (one tensor may exceed it)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = _numel(shape) * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _header(names: list[str], shapes: dict[str, tuple[int, ...]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        nbytes = _numel(shapes[name]) * 2
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def _write_tensor(handle, pool: ThreadPoolExecutor, name: str, shape: tuple[int, ...], seed: int) -> None:
    if name.endswith("norm.weight"):
        handle.write(np.full(_numel(shape), BF16_ONE, dtype="<u2").tobytes())
        return
    chunks = _tensor_chunks(name, shape, seed)
    for data in pool.map(lambda job: _random_bf16(*job), chunks):
        handle.write(data)


def write_random_checkpoint(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> list[str]:
    """Write model*.safetensors (+ index when sharded) into folder; return the file names."""
    shards = plan_shards(shapes)
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for file_name, names in zip(files, shards, strict=False):
            with open(folder / file_name, "wb") as handle:
                handle.write(_header(names, shapes))
                for name in names:
                    _write_tensor(handle, pool, name, shapes[name], seed)
                    weight_map[name] = file_name
    if len(files) > 1:
        total = sum(_numel(shape) * 2 for shape in shapes.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files
