"""Write random weights as sharded safetensors files, streaming, without torch.

The safetensors format is an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw bytes. numpy has
no bfloat16, so bf16 (and fp16) words are made directly from random bits: sign
and mantissa random, exponent drawn from 2^-9..2^-6, giving weights of
magnitude 0.002 to 0.03 (the scale of a trained model's). Norm weights are 1.0,
as a freshly initialised model has them. Quantised layouts add int32 words of
random bits (packed 4-bit codes) and positive fp16 scales. Generation is spread
over threads with one seeded generator per chunk, so the bytes are the same on
every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_ELEMENTS = 16 * 1024 * 1024
SHARD_BYTES = 4 * 1024**3
ITEM_BYTES = {"BF16": 2, "F16": 2, "I32": 4}
ONE = {"BF16": 0x3F80, "F16": 0x3C00}


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: its shape, safetensors dtype and how its values are drawn.

    fill: ``weight`` random sign, magnitude 2^-9..2^-6 (BF16, F16); ``ones`` 1.0;
    ``scale`` positive, 2^-12..2^-9 (F16: quantisation scales, so that a 4-bit code
    difference of up to 15 gives a weight of a trained model's size); ``bits``
    uniformly random words (I32: packed 4-bit codes); ``group_index`` (I32, one
    dimension) each input channel's quantisation group in a random order, every
    group holding ``group_size`` channels (GPTQ's ``g_idx`` with act-order).
    """

    shape: tuple[int, ...]
    dtype: str = "BF16"
    fill: str = "weight"
    group_size: int = 0

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * ITEM_BYTES[self.dtype]


def bf16_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """A plain checkpoint's tensors: bf16 weights, norms 1.0."""
    return {
        name: Tensor(shape, "BF16", "ones" if name.endswith("norm.weight") else "weight")
        for name, shape in shapes.items()
    }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


# 16-bit float layouts: (mantissa bits, lowest exponent field for 2^-9, for 2^-12)
_HALF_LAYOUT = {"BF16": (7, 0x76, 0x73), "F16": (10, 6, 3)}


def _random_words(seed: list[int], count: int) -> np.ndarray:
    """count uniformly random 16-bit words (every bit random: a word's top bit is a float's sign)."""
    return np.frombuffer(np.random.default_rng(seed).bytes(2 * count), dtype="<u2")


def _random_half(seed: list[int], count: int, dtype: str, fill: str) -> bytes:
    """16-bit floats with random mantissa, exponent one of four steps up from 2^-9 (or 2^-12 for scales)."""
    mantissa_bits, weight_low, scale_low = _HALF_LAYOUT[dtype]
    words = _random_words(seed, count)
    exponent = np.right_shift(words, mantissa_bits)
    np.bitwise_and(exponent, 3, out=exponent)
    np.add(exponent, scale_low if fill == "scale" else weight_low, out=exponent)
    np.left_shift(exponent, mantissa_bits, out=exponent)
    keep = (1 << mantissa_bits) - 1 if fill == "scale" else 0x8000 | ((1 << mantissa_bits) - 1)
    out = np.bitwise_and(words, keep)
    np.bitwise_or(out, exponent, out=out)
    return out.astype("<u2", copy=False).tobytes()


def _random_bytes(seed: list[int], count: int, tensor: Tensor) -> bytes:
    if tensor.fill == "group_index":
        if count != _numel(tensor.shape) or tensor.group_size < 1:
            raise ValueError(f"group_index needs a one-chunk tensor and a group size, got {tensor}")
        groups = np.arange(count, dtype=np.uint32) // tensor.group_size
        return np.random.default_rng(seed).permutation(groups).astype("<u4").tobytes()
    if tensor.dtype == "I32":
        return np.random.default_rng(seed).integers(0, 2**32, size=count, dtype=np.uint32).astype("<u4").tobytes()
    return _random_half(seed, count, tensor.dtype, tensor.fill)


def _tensor_chunks(name: str, shape: tuple[int, ...], seed: int) -> Iterator[tuple[list[int], int]]:
    """(seed, element count) for each chunk of one tensor; deterministic per name."""
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")
    total = _numel(shape)
    for index, start in enumerate(range(0, total, CHUNK_ELEMENTS)):
        yield [seed, name_key, index], min(CHUNK_ELEMENTS, total - start)


def plan_shards(tensors: dict[str, Tensor]) -> list[list[str]]:
    """Group tensors, in order, into shards of at most SHARD_BYTES (one tensor may exceed it)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.nbytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _header(names: list[str], tensors: dict[str, Tensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def _write_tensor(handle, pool: ThreadPoolExecutor, name: str, tensor: Tensor, seed: int) -> None:
    if tensor.fill == "ones":
        handle.write(np.full(_numel(tensor.shape), ONE[tensor.dtype], dtype="<u2").tobytes())
        return
    chunks = _tensor_chunks(name, tensor.shape, seed)
    for data in pool.map(lambda job: _random_bytes(*job, tensor), chunks):
        handle.write(data)


def write_random_checkpoint(folder: Path, tensors: dict[str, Tensor], seed: int = 0) -> list[str]:
    """Write model*.safetensors (+ index when sharded) into folder; return the file names."""
    shards = plan_shards(tensors)
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for file_name, names in zip(files, shards, strict=False):
            with open(folder / file_name, "wb") as handle:
                handle.write(_header(names, tensors))
                for name in names:
                    _write_tensor(handle, pool, name, tensors[name], seed)
                    weight_map[name] = file_name
    if len(files) > 1:
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files
