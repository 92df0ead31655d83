"""ExLlamaV2's own speed test (``test_inference.py -s``) on a cell's model, and its figure beside the cell's.

test_inference.py's token speed test loads the model as ExLlamaV2's scripts do
(model_init), then generates one token at a time through ``model.forward``
with an FP16 cache and an argmax pick, from position 1 to the context length,
printing the rate of each 128-token stretch. Run with ``-l`` = the cell's
context, its stretches cover the positions a cell decodes over; the reference
decode rate is their tokens over their time. The cell's rate goes through
ExLlamaV2's dynamic generator (job queue, sampler, streaming), so the ratio
says what the generator costs over a bare forward loop.

The speed test visits each context length once, in a fresh process; the cell
times repetitions after a warm-up over the same lengths. Where the first use of
a length costs more than later ones (seen on an H200 without flash-attn: torch's
attention call in ExLlamaV2's fallback path, about 50 ms a token the first
time), the two differ by that cost. So the cell's warm-up pass, which visits
each length for the first time as the speed test does, is compared too
(``warmup_tokens_per_s``: new tokens over the warm-up's time, prefill included).

test_inference.py sits in ExLlamaV2's repository, not in its wheel: the image
fetches it at the pinned release (images/exllamav2); elsewhere
``EXLLAMAV2_TEST_INFERENCE`` names it.

This file runs inside the engine's environment and imports nothing from the runner.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

TOOL = "ExLlamaV2 test_inference.py -s"
POSITION = re.compile(r"\*\* Position\s+(\d+)\s*\+\s*(\d+) tokens:\s*([\d.]+) t/s")


def script() -> Path | None:
    """Where test_inference.py is: EXLLAMAV2_TEST_INFERENCE, else beside this Python's prefix."""
    named = os.environ.get("EXLLAMAV2_TEST_INFERENCE")
    candidate = Path(named) if named else Path(sys.prefix) / "exllamav2-tools" / "test_inference.py"
    return candidate if candidate.is_file() else None


def command(test_inference: Path, model_dir: str, context: int, cuda_graphs: bool) -> list[str]:
    line = [sys.executable, str(test_inference), "-m", model_dir, "-s", "-l", str(context)]
    if not cuda_graphs:
        line.append("-ng")
    return line


def stretches(output: str) -> list[dict[str, float]]:
    """Each '** Position P + N tokens: R t/s' line as {position, tokens, tokens_per_s}."""
    return [{"position": int(p), "tokens": int(n), "tokens_per_s": float(r)} for p, n, r in POSITION.findall(output)]


def summarise(
    output: str, line: list[str], metrics: dict[str, Any], cache: str, new_tokens: int | None = None
) -> dict[str, Any]:
    """The speed test's decode rate over all its stretches beside the cell's (ratio = cell / speed test),
    and beside the cell's first (warm-up) pass when ``new_tokens`` says how many tokens it made."""
    found = stretches(output)
    if not found:
        tail = output.strip().splitlines()[-1:] or [""]
        return {"tool": TOOL, "command": line, "error": f"no speed lines in its output: {tail[0][:200]}"}
    tokens = sum(s["tokens"] for s in found)
    seconds = sum(s["tokens"] / s["tokens_per_s"] for s in found)
    summary: dict[str, Any] = {
        "tool": TOOL,
        "command": line,
        "decode_tokens_per_s": tokens / seconds,
        "positions": f"{found[0]['position']}-{found[-1]['position'] + found[-1]['tokens']}",
        "stretches": found,
        "cache": "fp16",
    }
    if cache != "fp16":
        summary["note"] = f"the speed test always uses an FP16 cache; this cell uses {cache.upper()}"
    ours = metrics.get("decode_tokens_per_s", {}).get("median")
    if ours:
        summary["decode_ratio"] = ours / summary["decode_tokens_per_s"]
    warmups = metrics.get("warmup_s") or []
    if new_tokens and warmups and warmups[0] > 0:
        summary["warmup_tokens_per_s"] = new_tokens / warmups[0]
        summary["warmup_ratio"] = summary["warmup_tokens_per_s"] / summary["decode_tokens_per_s"]
    return summary
