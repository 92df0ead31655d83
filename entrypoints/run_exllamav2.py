"""ExLlamaV2 cell: an EXL2 model (made by ExLlamaV2's converter) or a GPTQ checkpoint, through its dynamic generator.

With the dynamic generator (the default), generation is one
ExLlamaV2DynamicJob per sequence: greedy sampler settings, exactly N new tokens
(max_new_tokens = N and no stop conditions, so EOS cannot end it), with the
prefix cache's page table reset before each repetition so every repetition
prefills its prompt as the first one did. Without flash-attn (2.5.7 or later)
the generator runs unpaged, one sequence at a time, as ExLlamaV2 itself falls
back; the mode is recorded. With the streaming generator, one sequence:
begin_stream_ex (prefill) then N calls of stream_ex, each sampling one token,
with no stop conditions; the cache is emptied before each repetition (the
streaming generator would otherwise reuse the matching prefix), and the tokens
made are counted from its sequence. The clock reads after
``torch.cuda.synchronize()``; the first token closes prefill.

ExLlamaV2 builds its CUDA extension on first import (torch's JIT, nvcc); the
build goes to ``TORCH_EXTENSIONS_DIR``, by default a folder of the model store,
so it happens once per store, for the GPU's architecture only
(``TORCH_CUDA_ARCH_LIST`` is set from the device unless given).

reference() runs ExLlamaV2's own speed test (exllamav2_speed) on the same model
after this process freed it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import exllamav2_convert
import exllamav2_gptq
import exllamav2_speed
import harness
from shared import installed_version
from side_quantiser import checkpoint_quantisation as quantisation

try:
    import torch
except ImportError as exc:  # the cell is reported as not run here; the rest of the matrix goes on
    torch = None
    IMPORT_PROBLEM = f"{type(exc).__name__}: {exc}"


def extension_environment(derived: str | None) -> dict[str, str]:
    """Where the JIT-built extension goes and for which GPU architecture (unless the environment says)."""
    chosen: dict[str, str] = {}
    if not os.environ.get("TORCH_EXTENSIONS_DIR") and derived:
        chosen["TORCH_EXTENSIONS_DIR"] = str(Path(derived).parent / "torch-extensions")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        chosen["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    return chosen


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.settings = spec["cell"]["settings"]
        self.workload = spec["workload"]
        self.gpus = spec["cell"]["gpus"]
        self.model_dir = Path(spec["model"]["path"])
        self.context = harness.context_length(self.settings["max_seq_len"], self.workload)
        self.exl: Any = None  # the exllamav2 package, imported in check()
        self.model: Any = None
        self.cache: Any = None
        self.tokenizer: Any = None
        self.generator: Any = None
        self.facts: dict[str, Any] = {}
        self.extension: dict[str, Any] = {}

    def check(self) -> None:
        if torch is None:
            raise harness.CellUnsupported(f"torch is not importable here ({IMPORT_PROBLEM}): use the exllamav2 image")
        if not self.gpus or not torch.cuda.is_available():
            raise harness.CellUnsupported("ExLlamaV2 runs on CUDA GPUs only")
        if installed_version("exllamav2") is None:
            raise harness.CellUnsupported("exllamav2 is not installed here: use the exllamav2 image")
        if self.workload["prompt_tokens"] + self.workload["new_tokens"] > self.context:
            raise harness.CellInvalid(
                f"max_seq_len {self.context} is smaller than prompt + new tokens; raise it or leave it null"
            )
        chosen = extension_environment(self.spec["model"].get("derived_dir"))
        os.environ.update(chosen)
        t0 = time.perf_counter()
        import exllamav2  # builds (or loads) the CUDA extension

        self.extension = {
            "import_s": round(time.perf_counter() - t0, 2),
            "set_here": chosen,
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR"),
            "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST"),
        }
        self.exl = exllamav2

    def prepare(self) -> dict[str, Any] | None:
        found = quantisation(self.model_dir)
        derived = self.spec["model"].get("derived_dir")
        if self.settings["quant"] == "gptq":
            if found == "gptq":
                return None  # a GPTQ export (or the runner's synthetic GPTQ layout) is read as it is
            if found is not None:
                raise harness.CellInvalid(
                    f"quant gptq needs a GPTQ or an unquantised checkpoint and {self.model_dir} is already {found}: "
                    "point model.path at the unquantised model (GPTQModel quantises it once) or at a GPTQ export"
                )
            if not derived:
                raise harness.CellInvalid("the cell spec has no model.derived_dir to keep the GPTQ checkpoint in")
            try:
                path, record = exllamav2_gptq.gptq_checkpoint(self.spec["model"], Path(derived))
            except exllamav2_gptq.QuantiserMissing as exc:
                raise harness.CellUnsupported(str(exc)) from None
            self.model_dir = path
            return record
        if found == "exl2":
            return None  # an EXL2 export is read as it is
        if found is not None:
            raise harness.CellInvalid(
                f"quant exl2 converts an unquantised checkpoint and {self.model_dir} is already {found}: "
                "point model.path at the unquantised model (or at an EXL2 export)"
            )
        if not derived:
            raise harness.CellInvalid("the cell spec has no model.derived_dir to keep EXL2 models in")
        version = installed_version("exllamav2")
        path, record = exllamav2_convert.exl2_for(self.spec["model"], self.settings, Path(derived), version)
        self.model_dir = path
        return record

    def load(self) -> None:
        from exllamav2 import (
            ExLlamaV2,
            ExLlamaV2Cache,
            ExLlamaV2Cache_Q4,
            ExLlamaV2Cache_Q6,
            ExLlamaV2Cache_Q8,
            ExLlamaV2Config,
            ExLlamaV2Tokenizer,
        )
        from exllamav2.attn import has_flash_attn
        from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2StreamingGenerator

        caches = {"fp16": ExLlamaV2Cache, "q8": ExLlamaV2Cache_Q8, "q6": ExLlamaV2Cache_Q6, "q4": ExLlamaV2Cache_Q4}
        config = ExLlamaV2Config(str(self.model_dir))
        config.max_seq_len = self.context
        config.no_graphs = not self.settings["cuda_graphs"]
        self.model = ExLlamaV2(config)
        self.cache = caches[self.settings["cache"]](self.model, max_seq_len=self.context, lazy=True)
        self.model.load_autosplit(self.cache)
        self.tokenizer = ExLlamaV2Tokenizer(config)
        if self.settings["generator"] == "streaming":
            if self.workload["batch_size"] != 1:
                raise harness.CellInvalid("ExLlamaV2's streaming generator runs one sequence: batch_size must be 1")
            self.generator = ExLlamaV2StreamingGenerator(self.model, self.cache, self.tokenizer)
            self.generator.set_stop_conditions([])  # not even EOS: exactly N new tokens
            mode = "ExLlamaV2StreamingGenerator (one sequence, no stop conditions)"
        else:
            paged = bool(has_flash_attn)
            if not paged and self.workload["batch_size"] != 1:
                raise harness.CellInvalid(
                    "without flash-attn ExLlamaV2's generator runs unpaged, one sequence at a time: "
                    "batch_size must be 1"
                )
            self.generator = ExLlamaV2DynamicGenerator(
                model=self.model, cache=self.cache, tokenizer=self.tokenizer, paged=paged, max_batch_size=None
            )
            mode = "ExLlamaV2DynamicGenerator " + ("paged (flash-attn)" if paged else "unpaged (no flash-attn)")
        weights = self._weights(config)
        self.facts = {
            "weights": weights,
            "generator": mode,
            "context": self.context,
            "cache": self.settings["cache"],
            "model_dir": str(self.model_dir),
            "model_bytes": sum(p.stat().st_size for p in self.model_dir.glob("*.safetensors")),
            "extension": self.extension,
        }

    def _weights(self, config: Any) -> str:
        """What the loaded weights are, in the converter's own words where it left them."""
        quant = json.loads((self.model_dir / "config.json").read_text()).get("quantization_config") or {}
        if quant.get("quant_method") == "exl2":
            return f"EXL2 {quant.get('bits')} bpw (head {quant.get('head_bits')} bits), by ExLlamaV2's converter"
        if quant.get("quant_method") == "gptq":
            order = "act-order" if quant.get("desc_act") else "no act-order"
            return f"GPTQ {quant.get('bits')}-bit, group {quant.get('group_size')}, {order}"
        return "unquantised"

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            from exllamav2 import ExLlamaV2Config, ExLlamaV2Tokenizer

            self.tokenizer = ExLlamaV2Tokenizer(ExLlamaV2Config(str(self.model_dir)))
        ids = self.tokenizer.encode(text, add_bos=True, encode_special_tokens=False)
        return ids[0].tolist()

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        if self.settings["generator"] == "streaming":
            return self._generate_streaming(prompts[0], new_tokens)
        from exllamav2.generator import ExLlamaV2DynamicJob, ExLlamaV2Sampler

        self.generator.reset_page_table()  # no prefix reuse between repetitions
        greedy = ExLlamaV2Sampler.Settings.greedy()
        for prompt in prompts:
            job = ExLlamaV2DynamicJob(
                input_ids=torch.tensor([prompt], dtype=torch.long),
                max_new_tokens=new_tokens,
                gen_settings=greedy,
                stop_conditions=None,
            )
            self.generator.enqueue(job)
        self.synchronize()
        start = time.perf_counter()
        first: float | None = None
        produced = 0
        while self.generator.num_remaining_jobs():
            for update in self.generator.iterate():
                ids = update.get("token_ids") if update.get("stage") == "streaming" else None
                if ids is not None and ids.numel():
                    if first is None:
                        self.synchronize()
                        first = time.perf_counter() - start
                    produced += ids.shape[-1]
        self.synchronize()
        total = time.perf_counter() - start
        return harness.Timing(total, first, produced // len(prompts))

    def _generate_streaming(self, prompt: list[int], new_tokens: int) -> harness.Timing:
        """One sequence through the streaming generator: prefill, then one stream_ex call per token."""
        from exllamav2.generator import ExLlamaV2Sampler

        ids = torch.tensor([prompt], dtype=torch.long)
        self.generator.sequence_ids = None  # no prefix reuse between repetitions: prefill the whole prompt
        self.cache.current_seq_len = 0
        greedy = ExLlamaV2Sampler.Settings.greedy()
        self.synchronize()
        start = time.perf_counter()
        self.generator.begin_stream_ex(ids, greedy)
        first: float | None = None
        for _ in range(new_tokens):
            step = self.generator.stream_ex()
            if first is None:
                self.synchronize()
                first = time.perf_counter() - start
            if step.get("eos"):
                break
        self.synchronize()
        total = time.perf_counter() - start
        return harness.Timing(total, first, self.generator.sequence_ids.shape[-1] - len(prompt))

    def allocator_peak(self) -> dict[str, Any] | None:
        return harness.torch_cuda_peak(torch)  # check() ran: a CUDA GPU is there

    def details(self) -> dict[str, Any]:
        return self.facts

    def close(self) -> None:
        for name in ("generator", "cache"):
            setattr(self, name, None)
        if self.model is not None:
            self.model.unload()
            self.model = None
        gc.collect()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def versions(self) -> dict[str, Any]:
        found: dict[str, Any] = {"engine": "exllamav2", "engine_version": installed_version("exllamav2") or ""}
        if torch is not None:
            found.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
            if torch.cuda.is_available():
                found["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        for package in ("flash-attn", "safetensors", "tokenizers"):
            if version := installed_version(package):
                found[package] = version
        return found

    def reference(self, result: dict[str, Any]) -> dict[str, Any]:
        found = exllamav2_speed.script()
        if found is None:
            return {
                "tool": exllamav2_speed.TOOL,
                "error": "test_inference.py not found (the image fetches it; or set EXLLAMAV2_TEST_INFERENCE)",
            }
        command = exllamav2_speed.command(found, str(self.model_dir), self.context, self.settings["cuda_graphs"])
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=found.parent
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            return {"tool": exllamav2_speed.TOOL, "command": command, "error": f"exit {done.returncode}: {last}"}
        return exllamav2_speed.summarise(
            done.stdout, command, result["metrics"], self.settings["cache"], self.workload["new_tokens"]
        )


if __name__ == "__main__":
    harness.main(Engine)
