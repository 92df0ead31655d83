"""llama.cpp cell through llama-cpp-python: the GGUF of the cell's type, loaded with its offload / split settings.

prepare() gets the GGUF from the model store (converting and quantising once,
llamacpp_gguf.py). The binding loads the model and context (``Llama``); each
repetition then runs llama.cpp's own loop through its C API, as llama-bench does,
plus a greedy pick (``GreedyLoop``): the KV cache emptied, the prompt decoded in
batches of n_batch, then one ``llama_decode`` per new token, each token the
argmax of the logits llama.cpp copied to the host, exactly N tokens (EOS does
not end it). Reading the logits waits for the device, so every clock reading
comes after it finished; the first token closes prefill.

The prompt is tokenised by llama.cpp's own tokenizer from the GGUF; details()
records whether it agrees with the checkpoint's transformers tokenizer (run in a
child process: this process never imports torch).
reference() runs llama.cpp's ``llama-bench`` of the same build on the same GGUF
and settings (pp = prompt tokens from an empty context, tg = new tokens from
the prompt's depth: llamacpp_bench), after this process has
freed the model, so both figures sit in one result.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
import llamacpp_bench
import llamacpp_gguf

llamacpp_gguf.point_binding_at_build()  # before the import: the binding reads LLAMA_CPP_LIB_PATH once
try:
    import llama_cpp
    import numpy  # a dependency of llama-cpp-python
except ImportError as exc:  # the cell fails with this reason; the rest of the matrix goes on
    llama_cpp = None
    IMPORT_PROBLEM = f"{type(exc).__name__}: {exc}"

# ggml.h: NONE 0, DEBUG 1 (about 1000 lines a load), INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
# (llama-cpp-python's own _logger.py still documents an older order and lets DEBUG through.)
LOG_LEVELS_KEPT = (2, 3, 4)
_log_state = {"printing": False}


def _log_without_debug(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp's log to the cell's log, without its debug lines (its load report stays)."""
    if level != 5:
        _log_state["printing"] = level in LOG_LEVELS_KEPT
    if _log_state["printing"]:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


if llama_cpp is not None:
    _LOG_CALLBACK = llama_cpp.llama_log_callback(_log_without_debug)  # kept referenced while llama.cpp may call it
    llama_cpp.llama_log_set(_LOG_CALLBACK, None)

SPLIT_MODES = ("none", "layer", "row")  # llama_cpp.LLAMA_SPLIT_MODE_* are 0, 1, 2 in this order


TOKENIZE_SCRIPT = """
import json, sys
from transformers import AutoTokenizer
text = open(sys.argv[2], encoding="utf-8").read()
print(json.dumps(AutoTokenizer.from_pretrained(sys.argv[1])(text)["input_ids"]))
"""


def transformers_token_ids(model_path: str, text_file: Path) -> list[int] | str:
    """The checkpoint's transformers tokenisation of the prompt text, or why there is none.

    It runs in a child process: importing transformers (and with it torch and its CUDA
    libraries) into the process that holds llama.cpp's CUDA backend aborted that process
    on the H200 ("free(): invalid pointer").
    """
    done = subprocess.run(
        [sys.executable, "-c", TOKENIZE_SCRIPT, model_path, str(text_file)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"transformers tokenizer unavailable: {lines[-1] if lines else f'exit {done.returncode}'}"
    return json.loads(done.stdout.strip().splitlines()[-1])


class GreedyLoop:
    """llama.cpp's own decode loop through its C API, greedy, as llama-bench's tg runs it plus the pick.

    One llama_batch is allocated for the context and filled as the binding fills its own
    (explicit position, sequence 0, logits for the last token only). The token is the argmax
    of the logits row llama.cpp has copied to the host, read in place by numpy (the first
    maximum, as llama.cpp's greedy sampler takes). llama.cpp's sampler chain would first build
    a candidate array over the whole vocabulary every token: with shisa's 120,128 tokens that
    cost 0.35 ms a token on an H200 host, 6 % of the decode (results/h200/llamacpp-decode/).
    """

    def __init__(self, llm: Any):
        self.ctx, self.n_batch, self.n_vocab = llm.ctx, llm.n_batch, llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def run(self, prompt: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        """(tokens, seconds to the first, seconds in all), from an emptied KV cache (no prefix reuse)."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        tokens: list[int] = []
        first = 0.0
        start = time.perf_counter()
        for at in range(0, len(prompt), self.n_batch):
            self._decode(prompt[at : at + self.n_batch], at)
        while True:
            tokens.append(self._pick())
            if len(tokens) == 1:
                first = time.perf_counter() - start
            if len(tokens) == new_tokens:
                break
            self._decode(tokens[-1:], len(prompt) + len(tokens) - 1)
        return tokens, first, time.perf_counter() - start

    def _pick(self) -> int:
        """The greedy token: llama_get_logits_ith waits for the device, so the clock reads after it."""
        logits = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return int(numpy.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def _decode(self, tokens: list[int], pos0: int) -> None:
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos0 + i, 1, 0
            batch.seq_id[i][0] = 0
        batch.logits[len(tokens) - 1] = 1
        code = llama_cpp.llama_decode(self.ctx, batch)
        if code != 0:  # 1: no KV cache slot for the batch; < 0: an error
            raise RuntimeError(f"llama_decode returned {code} for a batch of {len(tokens)} token(s)")

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gpus = spec["cell"]["gpus"]
        self.n_ctx = harness.context_length(self.settings["n_ctx"], self.workload)
        self.gguf: Path | None = None
        self.llm: Any = None
        self.loop: GreedyLoop | None = None
        self.facts: dict[str, Any] = {}
        self.transformers_ids: list[int] | str = "not prepared"

    def check(self) -> None:
        if llama_cpp is None:
            raise harness.CellUnsupported(
                f"llama-cpp-python is not importable here ({IMPORT_PROBLEM}): use the llamacpp image, "
                "or `make setup-llamacpp` for the local executor"
            )
        if self.workload["batch_size"] != 1:
            raise harness.CellInvalid("llama-cpp-python's Llama generates one sequence at a time: batch_size must be 1")
        needed = self.workload["prompt_tokens"] + self.workload["new_tokens"]
        if self.n_ctx < needed:
            raise harness.CellInvalid(
                f"n_ctx {self.n_ctx} is smaller than prompt + new tokens ({needed}); raise n_ctx or leave it null"
            )
        if self.gpus and not llama_cpp.llama_supports_gpu_offload():
            raise harness.CellUnsupported(
                "this llama.cpp build has no GPU backend (built without -DGGML_CUDA=on), so a GPU cell cannot offload"
            )

    def prepare(self) -> dict[str, Any]:
        derived = self.spec["model"].get("derived_dir")
        if not derived:
            raise harness.CellInvalid("the cell spec has no model.derived_dir to keep GGUF files in")
        try:
            self.gguf, record = llamacpp_gguf.gguf_for(self.spec["model"], self.settings["quant"], Path(derived))
        except llamacpp_gguf.ToolchainMissing as exc:
            raise harness.CellUnsupported(str(exc)) from None
        self.transformers_ids = transformers_token_ids(self.spec["model"]["path"], harness.PROMPT_FILE)
        return record

    def _n_gpu_layers(self) -> int:
        return self.settings["n_gpu_layers"] if self.gpus else 0

    def load(self) -> None:
        s = self.settings
        self.llm = llama_cpp.Llama(
            model_path=str(self.gguf),
            n_gpu_layers=self._n_gpu_layers(),
            split_mode=SPLIT_MODES.index(s["split_mode"]),
            main_gpu=s["main_gpu"],
            tensor_split=[float(v) for v in s["tensor_split"]] if s["tensor_split"] else None,
            n_ctx=self.n_ctx,
            n_batch=s["n_batch"],
            n_ubatch=s["n_ubatch"],
            flash_attn=s["flash_attn"],
            # llama-cpp-python's own defaults (half the CPUs to generate, all of them for prompt batches),
            # counted over the CPUs this cell may use rather than the whole host's
            n_threads=s["n_threads"] or max(len(harness.cell_cpus()) // 2, 1),
            n_threads_batch=len(harness.cell_cpus()),
            offload_kqv=s["offload_kqv"],
            seed=0,
            verbose=True,  # llama.cpp's load report (buffers per device, offloaded layers) goes to the cell log
        )
        self.loop = GreedyLoop(self.llm)
        self.facts = {
            "n_vocab": self.llm.n_vocab(),
            "n_ctx": self.llm.n_ctx(),
            "n_threads": self.llm.n_threads,
            "n_threads_batch": self.llm.n_threads_batch,
            "model_bytes": llama_cpp.llama_model_size(self.llm.model),
            "model_params": llama_cpp.llama_model_n_params(self.llm.model),
            "gguf_metadata": {k: v for k, v in self.llm.metadata.items() if not k.startswith("tokenizer.chat")},
            "tokenizer_check": self._tokenizer_check(),
        }

    def _tokenizer_check(self) -> dict[str, Any]:
        """Does llama.cpp tokenise the prompt text as the checkpoint's transformers tokenizer does?"""
        ours = self.tokenize(harness.PROMPT_FILE.read_text())
        theirs = self.transformers_ids
        if isinstance(theirs, str):  # a checkpoint without a transformers tokenizer still runs
            return {"compared": False, "why": theirs, "llama_cpp_tokens": len(ours)}
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        if first is None and len(ours) != len(theirs):
            first = min(len(ours), len(theirs))
        return {
            "compared": True,
            "agrees": first is None,
            "llama_cpp_tokens": len(ours),
            "transformers_tokens": len(theirs),
            "first_difference": first,
        }

    def synchronize(self) -> None:
        if self.llm is not None:
            llama_cpp.llama_synchronize(self.llm.ctx)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=False)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        self.synchronize()
        tokens, first, total = self.loop.run(prompts[0], new_tokens)
        return harness.Timing(total, first, len(tokens))

    def allocator_peak(self) -> dict[str, Any] | None:
        return None  # llama.cpp allocates its buffers up front: the NVML device peak is its memory

    def compute_threads(self) -> tuple[int, str] | None:
        if self.llm is None:
            return None
        return self.llm.n_threads, f"llama.cpp n_threads (prompt batches: n_threads_batch {self.llm.n_threads_batch})"

    def details(self) -> dict[str, Any]:
        return self.facts

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None
            gc.collect()

    def versions(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "engine": "llama.cpp",
            "engine_version": llama_cpp.__version__,
            "llama_cpp_python": llama_cpp.__version__,
        }
        try:
            build = llamacpp_gguf.Toolchain.from_environment().build_info
            found["llama_cpp_build"] = build
            found["engine_version"] = f"{llama_cpp.__version__} (llama.cpp {build.get('llama_cpp_commit')})"
        except llamacpp_gguf.ToolchainMissing:
            pass
        found["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        found["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        return found

    def reference(self, result: dict[str, Any]) -> dict[str, Any]:
        bench = llamacpp_gguf.Toolchain.from_environment().bench
        if not bench.exists():
            return {"tool": "llama-bench", "error": f"{bench} not found"}
        command = llamacpp_bench.command(
            bench, self.gguf, self.settings, self.workload, self._n_gpu_layers(), self.facts["n_threads"]
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            return {"tool": "llama-bench", "command": command, "error": f"exit {done.returncode}: {last}"}
        return llamacpp_bench.summarise(json.loads(done.stdout), command, result["metrics"])


if __name__ == "__main__":
    harness.main(Engine)
