"""entrypoints/harness.py's RepeatedLogFilter, in a real interpreter started in entrypoints/
(where engine scripts run and import harness): a log warning repeated 1000 times (bitsandbytes
logs one per matmul) reaches stderr once and is summarised with its count; and harness.run puts
that summary into the cell's result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from runner.shared import RESULT_SCHEMA_VERSION

REPEATED = "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization"

FILTER_SCRIPT = textwrap.dedent(
    f"""
    import json, logging
    import harness

    handler = harness.RepeatedLogFilter()
    logging.getLogger().addHandler(handler)
    for _ in range(1000):
        logging.getLogger("bitsandbytes.autograd").warning({REPEATED!r})
    logging.getLogger("other").warning("only once\\nsecond line of the same record")
    logging.getLogger("other").info("below WARNING: not kept")
    print(json.dumps(handler.summary()))
    """
)

# a tiny engine (no torch) that logs the warning 1000 times while it generates
ENGINE_SCRIPT = textwrap.dedent(
    f"""
    import logging, sys
    import harness

    class Engine:
        def __init__(self, spec):
            pass
        def check(self):
            pass
        def load(self):
            pass
        def synchronize(self):
            pass
        def tokenize(self, text):
            return [1] + [ord(c) for c in text[:50]]
        def generate(self, prompts, new_tokens):
            for _ in range(500):
                logging.getLogger("bitsandbytes.autograd").warning({REPEATED!r})
            return harness.Timing(0.5, 0.1, new_tokens)
        def allocator_peak(self):
            return None
        def versions(self):
            return {{"engine": "fake"}}

    sys.exit(harness.run(Engine, sys.argv[1:]))
    """
)


def run_in_entrypoints(repo, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=repo / "entrypoints",
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # CPU: no NVML sampling
    )


def test_repeated_warning_printed_once_and_counted(repo):
    done = run_in_entrypoints(repo, FILTER_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"WARNING bitsandbytes.autograd: {REPEATED}", "WARNING other: only once"]
    assert json.loads(done.stdout) == [f"log: {REPEATED} (x1000)", "log: only once"]


def test_harness_run_records_the_summary_in_the_result(repo, tmp_path):
    spec = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "cell": {"id": "fake-cell", "gpus": [], "settings": {}},
        "model": {"path": "/nowhere"},
        "workload": {"prompt_tokens": 8, "new_tokens": 4, "batch_size": 1, "warmup": 0, "repetitions": 2},
    }
    spec_path, out = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(spec))
    done = run_in_entrypoints(repo, ENGINE_SCRIPT, "--spec", str(spec_path), "--output", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"WARNING bitsandbytes.autograd: {REPEATED}"]
    result = json.loads(out.read_text())
    assert result["status"] == "ok"
    assert result["warnings"] == [f"log: {REPEATED} (x1000)"]  # 2 repetitions x 500
    assert result["metrics"]["tokens_per_s"]["values"] == [8.0, 8.0]
    assert done.stdout.startswith("[fake-cell] ok: 8.00 tok/s")
