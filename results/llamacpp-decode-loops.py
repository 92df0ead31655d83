"""Where the time between llama-bench and a llama.cpp cell goes: decode loops compared in one process.

Run on the GPU machine from the repository root, with LLAMA_CPP_HOME pointing at the llama.cpp
build and the binding on PYTHONPATH (as results/device-run.sh sets them):

    python3 results/llamacpp-decode-loops.py GGUF [N_NEW] [REPEATS]

Every loop starts from an emptied KV cache, prefills the same 64-token prompt and makes N_NEW
tokens greedily; each prints its decode time per token (the median over REPEATS, repeats of
the loops interleaved) and the tokens are checked to agree. llama-bench's tg on the same GGUF
runs last. Loops:

* binding: llama-cpp-python's Llama.generate (what the cells used until 2026-12-02);
* get_one: llama_decode of llama_batch_get_one (positions left to llama.cpp) + a greedy sampler;
* explicit: llama_decode of one preallocated llama_batch with explicit position, sequence and
  output flag (as the binding fills its batch) + a greedy sampler;
* argmax: explicit batch, token = numpy argmax over llama_get_logits_ith (no sampler);
* explicit+nvml: explicit, with the harness's NVML memory sampler polling every 5 ms.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import harness
import llamacpp_gguf

llamacpp_gguf.point_binding_at_build()
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

GGUF = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 256
REPEATS = int(sys.argv[3]) if len(sys.argv) > 3 else 5

llm = llama_cpp.Llama(model_path=GGUF, n_gpu_layers=-1, n_ctx=512, verbose=False, seed=0)
ctx = llm.ctx
prompt = llm.tokenize(harness.PROMPT_FILE.read_text().encode(), add_bos=True, special=False)[:64]
n_vocab = llm.n_vocab()
batch = llama_cpp.llama_batch_init(512, 0, 1)


def clear() -> None:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)


def decode_explicit(tokens: list[int], pos0: int) -> None:
    batch.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos0 + i, 1, 0
        batch.seq_id[i][0] = 0
    batch.logits[len(tokens) - 1] = 1
    assert llama_cpp.llama_decode(ctx, batch) == 0


def binding() -> tuple[list[int], float, float]:
    llm.reset()
    out, first = [], 0.0
    start = time.perf_counter()
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=False):
        out.append(token)
        if len(out) == 1:
            first = time.perf_counter() - start
        if len(out) == N:
            break
    return out, first, time.perf_counter() - start


def get_one() -> tuple[list[int], float, float]:
    clear()
    sampler = llama_cpp.llama_sampler_init_greedy()
    one = (llama_cpp.llama_token * 1)()
    ids = (llama_cpp.llama_token * len(prompt))(*prompt)
    out, first = [], 0.0
    start = time.perf_counter()
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(prompt))) == 0
    while True:
        out.append(llama_cpp.llama_sampler_sample(sampler, ctx, -1))
        if len(out) == 1:
            first = time.perf_counter() - start
        if len(out) == N:
            break
        one[0] = out[-1]
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
    total = time.perf_counter() - start
    llama_cpp.llama_sampler_free(sampler)
    return out, first, total


def explicit(pick: str = "sampler") -> tuple[list[int], float, float]:
    clear()
    sampler = llama_cpp.llama_sampler_init_greedy()
    out, first = [], 0.0
    start = time.perf_counter()
    decode_explicit(prompt, 0)
    while True:
        if pick == "sampler":
            token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
        else:
            token = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).argmax())
        out.append(token)
        if len(out) == 1:
            first = time.perf_counter() - start
        if len(out) == N:
            break
        decode_explicit([token], len(prompt) + len(out) - 1)
    total = time.perf_counter() - start
    llama_cpp.llama_sampler_free(sampler)
    return out, first, total


def with_nvml() -> tuple[list[int], float, float]:
    sampler = harness.MemorySampler()
    sampler.start()
    try:
        return explicit()
    finally:
        sampler.stop()


LOOPS = {
    "binding": binding,
    "get_one": get_one,
    "explicit": explicit,
    "argmax": lambda: explicit("argmax"),
    "explicit+nvml": with_nvml,
}
per_token: dict[str, list[float]] = {name: [] for name in LOOPS}
tokens: dict[str, list[int]] = {}
for loop in LOOPS.values():
    loop()  # warm-up (CUDA graphs, allocations)
for _ in range(REPEATS):
    for name, loop in LOOPS.items():
        out, first, total = loop()
        per_token[name].append(1000 * (total - first) / (N - 1))
        tokens[name] = out
report = {
    name: {"decode_ms_per_token": statistics.median(v), "tok_s": 1000 / statistics.median(v), "all": v}
    for name, v in per_token.items()
}
report["tokens_agree"] = all(out == tokens["binding"] for out in tokens.values())
llm.close()
bench = llamacpp_gguf.Toolchain.from_environment().bench
done = subprocess.run(
    [str(bench), "-m", GGUF, "-p", "0", "-n", str(N), "-r", str(REPEATS), "-ngl", "99", "-o", "json"],
    capture_output=True,
    text=True,
)
if done.returncode == 0:
    tg = json.loads(done.stdout)[0]
    report["llama-bench"] = {"tok_s": tg["avg_ts"], "decode_ms_per_token": 1000 / tg["avg_ts"]}
else:
    report["llama-bench"] = {"error": done.stderr[-500:]}
print(json.dumps(report, indent=2))
