"""gpt-fast cell: pytorch-labs/gpt-fast's own model and decoding, on weights made by its own scripts.

prepare() gets the cell's weights from the model store (gptfast_checkpoint.py): the HF
checkpoint converted once by gpt-fast's scripts/convert_hf_checkpoint.py, and int8 / int4
quantised once from that by its quantize.py, with ModelArgs derived from config.json. load()
is generate.py's own ``_load_model`` (meta-device Transformer, quantised linear layers swapped
in by its handlers, mmap'd state dict, bf16 on the device); with ``compile`` on,
``decode_one_token`` is replaced by ``torch.compile(decode_one_token, mode=compile_mode,
fullgraph=True)`` exactly as generate.py's main() does (mode "reduce-overhead": CUDA graphs).

Each generation is generate.py's ``generate()`` split at the first token so the harness can
time prefill apart: the KV cache set up for prompt + N tokens (generate.py's own sizing), then
``prefill`` (eager unless compile_prefill), a device synchronise and the first-token clock, then
``decode_n_tokens`` for the other N - 1 tokens, then a synchronise. Sampling is gpt-fast's own
with top_k = 1, which keeps only the largest logit: greedy. Nothing stops at EOS. The first
warm-up compiles; its time is reported as ``compile_s`` (what generate.py prints as
"Compilation time"), never in the timed runs.

details() reports gpt-fast's own model size (``_get_model_size``: every parameter and buffer
outside the embedding) and the bandwidth it implies at the measured tok/s, as generate.py
prints it. reference() runs gpt-fast's generate.py on the same weights and settings after the
model is freed (gptfast_bench.py).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gptfast_bench
import gptfast_checkpoint
import harness
from shared import installed_version

try:
    import torch
except ImportError as exc:  # the cell fails with this reason; the rest of the matrix goes on
    torch = None
    IMPORT_PROBLEM = f"{type(exc).__name__}: {exc}"

SAMPLING = {"temperature": 1.0, "top_k": 1}  # top_k 1: gpt-fast's sampler keeps only the argmax
INT4_ON_CPU = (
    "gpt-fast's int4 packs weights for torch's CUDA tinygemm kernel (_convert_weight_to_int4pack, "
    "_weight_int4pack_mm), which needs a CUDA GPU; run int4 cells with gpus: [0]"
)


def import_gpt_fast(home: Path) -> tuple[Any, Any, Any]:
    """gpt-fast's generate, model and tokenizer modules from its source tree (generate.py sets its inductor
    options at import: coordinate-descent tuning, the FX graph cache)."""
    if str(home) not in sys.path:
        sys.path.insert(0, str(home))
    import generate
    import model
    import tokenizer

    return generate, model, tokenizer


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gpus = spec["cell"]["gpus"]
        self.cuda = torch is not None and torch.cuda.is_available() and bool(self.gpus)
        self.device = "cuda" if self.cuda else "cpu"
        self.weights: Path | None = None
        self.home: Path | None = None
        self.gf: Any = None  # gpt-fast's generate, model and tokenizer modules
        self.gf_model: Any = None
        self.gf_tokenizer: Any = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.prefill: Any = None
        self.original_decode: Any = None
        self.times: list[float] = []
        self.facts: dict[str, Any] = {}

    def check(self) -> None:
        if torch is None:
            raise harness.CellUnsupported(f"torch is not importable here ({IMPORT_PROBLEM}): use the gptfast image")
        try:
            self.home = gptfast_checkpoint.source_home()
            self.gf, self.gf_model, self.gf_tokenizer = import_gpt_fast(self.home)
        except gptfast_checkpoint.SourceMissing as exc:
            raise harness.CellUnsupported(str(exc)) from None
        except ImportError as exc:
            raise harness.CellUnsupported(f"gpt-fast's generate.py does not import here: {exc}") from None
        harness.refuse_cpu_stand_in(self.gpus, self.cuda, f"torch {torch.__version__} sees no CUDA device here")
        s = self.settings
        if s["precision"] == "int4" and not self.cuda:
            raise harness.CellUnsupported(INT4_ON_CPU)
        if len(self.gpus) > 1:
            raise harness.CellInvalid("a gpt-fast cell runs on one GPU (its tensor parallel needs torchrun): gpus: [N]")
        if s["compile"] and self.workload["warmup"] < 1:
            raise harness.CellInvalid("a compiled gpt-fast cell needs warmup >= 1: the first generation compiles")
        self._check_model()

    def _check_model(self) -> None:
        path = Path(self.spec["model"]["path"])
        try:
            config = gptfast_checkpoint.load_config(path)
            gptfast_checkpoint.model_args(config)
        except gptfast_checkpoint.ModelUnsupported as exc:
            raise harness.CellInvalid(f"gpt-fast cannot run this model: {exc}") from None
        if not (path / "tokenizer.model").is_file():
            raise harness.CellInvalid(f"gpt-fast reads a SentencePiece tokenizer.model, and {path} has none")
        needed = self.workload["prompt_tokens"] + self.workload["new_tokens"]
        window = config.get("sliding_window")
        if window and needed > window:
            raise harness.CellInvalid(
                f"prompt + new tokens ({needed}) exceed the model's sliding window ({window}), which gpt-fast's "
                "attention does not implement; shorten the workload"
            )
        derived = self.spec["model"].get("derived_dir")
        if not derived:
            raise harness.CellInvalid("the cell spec has no model.derived_dir to keep gpt-fast checkpoints in")
        problem = gptfast_checkpoint.path_problem(Path(derived) / "gptfast" / "x" / "model.pth")
        if problem:
            raise harness.CellInvalid(problem)

    def prepare(self) -> dict[str, Any]:
        s, model = self.settings, self.spec["model"]
        derived = Path(model["derived_dir"])
        self.weights, record = gptfast_checkpoint.checkpoint_for(
            model, s["precision"], s["groupsize"], derived, torch.__version__
        )
        return record

    def load(self) -> None:
        s = self.settings
        gptfast_checkpoint.register(self.gf_model, self.weights.parent)
        self.model = self.gf._load_model(self.weights, self.device, torch.bfloat16, False)
        model_bytes, params = self.gf._get_model_size(self.model)
        self.tokenizer = self.gf_tokenizer.get_tokenizer(self.weights.parent / "tokenizer.model", self.weights)
        self.prefill = self.gf.prefill
        if s["compile"]:
            self.original_decode = self.gf.decode_one_token
            # as generate.py's main(): decode_n_tokens calls the module's (now compiled) decode_one_token
            self.gf.decode_one_token = torch.compile(self.gf.decode_one_token, mode=s["compile_mode"], fullgraph=True)
            if s["compile_prefill"]:
                self.prefill = torch.compile(self.gf.prefill, fullgraph=True, dynamic=True)
        self.facts = {"model_bytes": model_bytes, "model_params": params, "sampling": SAMPLING}

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def tokenize(self, text: str) -> list[int]:
        return [self.tokenizer.bos_id(), *self.tokenizer.encode(text)]  # generate.py's encode_tokens(bos=True)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        with torch.no_grad():  # as generate.py's generate()
            return self._generate(prompts, new_tokens)

    def _generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        batch, length = len(prompts), len(prompts[0])
        device = torch.device(self.device)
        prompt = torch.tensor(prompts, dtype=torch.int, device=device)
        with device:  # generate.py's sizing: prompt + new tokens (setup_caches keeps caches already that large)
            self.model.setup_caches(max_batch_size=batch, max_seq_length=min(length + new_tokens, self.block_size))
        input_pos = torch.arange(0, length, device=device)
        self.synchronize()
        start = time.perf_counter()
        token = self.prefill(self.model, prompt, input_pos, **SAMPLING).clone()
        self.synchronize()
        first = time.perf_counter() - start
        input_pos = torch.tensor([length], device=device, dtype=torch.int)
        tokens, _ = self.gf.decode_n_tokens(self.model, token.view(batch, -1), input_pos, new_tokens - 1, **SAMPLING)
        self.synchronize()
        total = time.perf_counter() - start
        self.times.append(total)
        return harness.Timing(total, first, 1 + len(tokens))

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def allocator_peak(self) -> dict[str, Any] | None:
        return harness.torch_cuda_peak(torch) if self.cuda else None

    def details(self) -> dict[str, Any]:
        """gpt-fast's model size and the bandwidth it implies at this cell's median tok/s (timed runs only)."""
        timed = self.times[self.workload["warmup"] :]
        new = self.workload["new_tokens"]
        details = dict(self.facts)
        if timed:
            tok_s = statistics.median(new / t for t in timed)
            details["bandwidth_gb_s"] = self.facts["model_bytes"] * tok_s / 1e9
        if self.settings["compile"] and self.times:
            details["compile_s"] = self.times[0]  # the first warm-up: compilation plus one generation
        return details

    def close(self) -> None:
        if self.original_decode is not None:
            self.gf.decode_one_token = self.original_decode
            self.original_decode = None
        self.model = self.prefill = None
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def versions(self) -> dict[str, Any]:
        home = self.home or gptfast_checkpoint.source_home()
        commit = gptfast_checkpoint.source_commit(home)
        found: dict[str, Any] = {
            "engine": "gpt-fast",
            "engine_version": commit[:12] if commit else f"source {gptfast_checkpoint.source_digest(home)}",
            "gpt_fast_commit": commit,
            "gpt_fast_home": str(home),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
        }
        for package in ("sentencepiece", "tiktoken", "safetensors"):
            if version := installed_version(package):
                found[package] = version
        if self.cuda:
            found["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return found

    def reference(self, result: dict[str, Any]) -> dict[str, Any]:
        args = gptfast_bench.arguments(self.weights, self.settings, self.workload, self.device, SAMPLING)
        command = gptfast_checkpoint.tool_command(self.home, self.weights.parent, "run", str(self.home / "generate.py"))
        command += args
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        print(f"--- {gptfast_bench.TOOL}: {' '.join(command)}\n{done.stdout}{done.stderr[-3000:]}", file=sys.stderr)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            return {"tool": gptfast_bench.TOOL, "command": command, "error": f"exit {done.returncode}: {last}"}
        return gptfast_bench.summarise(done.stdout, command, result["metrics"])


if __name__ == "__main__":
    harness.main(Engine)
