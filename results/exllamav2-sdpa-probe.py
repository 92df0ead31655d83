"""Why ExLlamaV2's own speed test runs about 10x below the cell without flash-attn: its one slow call, timed.

test_inference.py -s (ExLlamaV2 0.3.2, no flash-attn) decodes through ExLlamaV2's
torch attention fallback (attn.py ``_attn_torch``): per layer and token one
``F.scaled_dot_product_attention`` over the unpaged cache, without a mask. Under
cProfile that call took 13.5 of its 15.7 s of forward time (8,192 calls: 32
layers x 256 tokens, 1.6 ms each; results/README.md, results/h200/exllamav2). The
cell runs the same call through the dynamic generator, but after a warm-up over
exactly the sequence lengths it then times. This script reproduces the call with
the cell's shapes (Mistral-7B: 32 query heads, 8 KV heads, head dim 128, fp16,
one query token, keys narrowed from a 512-token cache and repeated to 32 heads,
as ``repeat_kv`` does) for each key length 1..256: first cold, then again
(warm), then at new lengths with each SDPA backend forced, and prints the
median time per call of each pass. Needs only torch and a CUDA GPU.

    python3 results/exllamav2-sdpa-probe.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, HEAD_DIM, CACHE = 32, 8, 128, 2048


def call(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: int) -> float:
    """One attention call as _attn_torch makes it, synchronised on both sides; milliseconds."""
    k = keys.narrow(1, 0, length).transpose(1, 2)  # (1, 8, L, 128), a strided view of the cache
    v = values.narrow(1, 0, length).transpose(1, 2)
    k = k[:, :, None].expand(1, KV_HEADS, HEADS // KV_HEADS, length, HEAD_DIM).reshape(1, HEADS, length, HEAD_DIM)
    v = v[:, :, None].expand(1, KV_HEADS, HEADS // KV_HEADS, length, HEAD_DIM).reshape(1, HEADS, length, HEAD_DIM)
    torch.cuda.synchronize()
    start = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(q, k, v, None, scale=HEAD_DIM**-0.5)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def sweep(name: str, lengths: range, backend: SDPBackend | None = None) -> None:
    q = torch.randn(1, 1, HEADS, HEAD_DIM, device="cuda", dtype=torch.half).transpose(1, 2)
    keys = torch.randn(1, CACHE, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.half)
    values = torch.randn_like(keys)
    try:
        if backend is None:
            times = [call(q, keys, values, n) for n in lengths]
        else:
            with sdpa_kernel([backend]):
                times = [call(q, keys, values, n) for n in lengths]
    except RuntimeError as exc:
        print(f"{name:<44} failed: {str(exc).splitlines()[0][:100]}")
        return
    first = times[0]
    print(
        f"{name:<44} median {statistics.median(times):7.3f} ms  max {max(times):7.3f}  first {first:7.3f}"
        f"  (lengths {lengths.start}-{lengths.stop - 1})",
        flush=True,
    )


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}")
    print(
        "backends enabled: flash", torch.backends.cuda.flash_sdp_enabled(),
        "efficient", torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn", torch.backends.cuda.cudnn_sdp_enabled(),
        "math", torch.backends.cuda.math_sdp_enabled(),
    )  # fmt: skip
    sweep("default backends, cold (as test_inference -s)", range(1, 257))
    sweep("default backends, warm (as the timed cell)", range(1, 257))
    for offset, backend in enumerate(
        (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    ):
        lengths = range(257 + 256 * offset, 257 + 256 * (offset + 1))
        sweep(f"{backend.name} only, cold", lengths, backend)
        sweep(f"{backend.name} only, warm", lengths, backend)


if __name__ == "__main__":
    main()
