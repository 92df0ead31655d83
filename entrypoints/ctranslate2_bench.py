"""A plain CTranslate2 timing of one converted model: the figure each CTranslate2 row is compared with.

CTranslate2 ships no benchmark tool, so this is the smallest script that times it
the way its documentation generates text, in a process of its own (after the cell
has freed its model): load a ``ctranslate2.Generator``, one warm-up, then per
repetition the same prompt tokens greedily to exactly N new tokens, once
streamed through ``generate_tokens`` (what the cell uses) and once in one
``generate_batch`` call (no per-token Python). It prints one JSON line.

Usage: python ctranslate2_bench.py MODEL DEVICE COMPUTE_TYPE NEW_TOKENS REPETITIONS PROMPT_JSON [GENERATOR_KWARGS]

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    model_dir, device, compute_type, new_tokens, repetitions, prompt_file = argv[:6]
    options = json.loads(argv[6]) if len(argv) > 6 else {}
    new_tokens, repetitions = int(new_tokens), int(repetitions)
    import ctranslate2

    prompt = json.loads(Path(prompt_file).read_text())  # token strings of the converted model's vocabulary
    generator = ctranslate2.Generator(model_dir, device=device, compute_type=compute_type, **options)
    length = {"max_length": new_tokens, "min_length": new_tokens, "end_token": []}

    def streamed() -> tuple[float, int]:
        start, count = time.perf_counter(), 0
        for _ in generator.generate_tokens(prompt, sampling_topk=1, **length):
            count += 1
        return time.perf_counter() - start, count

    def batched() -> tuple[float, int]:
        start = time.perf_counter()
        result = generator.generate_batch([prompt], include_prompt_in_result=False, sampling_topk=1, **length)
        return time.perf_counter() - start, len(result[0].sequences_ids[0])

    summary: dict[str, object] = {"ctranslate2": ctranslate2.__version__, "repetitions": repetitions}
    for name, run in (("generate_tokens", streamed), ("generate_batch", batched)):
        run()  # warm-up
        times, counts = zip(*(run() for _ in range(repetitions)), strict=True)
        if set(counts) != {new_tokens}:
            raise SystemExit(f"{name} gave {sorted(set(counts))} tokens, not {new_tokens}")
        rates = [new_tokens / t for t in times]
        summary[name] = {"tokens_per_s": statistics.median(rates), "values": rates}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
