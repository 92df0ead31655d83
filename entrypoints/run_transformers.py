"""HF Transformers cell: from_pretrained with the cell's dtype / attention / bitsandbytes settings, then generate().

Generation is greedy and forced to exactly N new tokens (min_new_tokens =
max_new_tokens = N, so EOS cannot end it early). The first generated token is
timestamped by a streamer after a device synchronise, which splits prefill
from decode. generate() already runs under torch.no_grad(), so grad_mode
'default' and 'no_grad' differ only by the outer context, as in the seed table.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import harness
import torch
import transformers
from shared import installed_version
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

# written by the GPU image's build into its venv: the flash-attn it installed, or why none
FLASH_ATTN_MARKER = "inference-matrix-flash-attn.txt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FirstTokenClock(BaseStreamer):
    """generate() calls put() with the prompt, then with each new token: stamp the first new one."""

    def __init__(self, synchronize):
        self.synchronize = synchronize
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.synchronize()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def flash_attn_build(prefix: str = sys.prefix) -> str | None:
    """What the GPU image's build did about flash-attn (images/transformers/flash-attn.sh), where it ran."""
    try:
        return (Path(prefix) / FLASH_ATTN_MARKER).read_text().strip() or None
    except OSError:
        return None


class Engine:
    def __init__(self, spec: dict[str, Any]):
        self.settings = spec["cell"]["settings"]
        self.model_path = spec["model"]["path"]
        self.gpus = spec["cell"]["gpus"]
        self.cuda = torch.cuda.is_available() and bool(self.gpus)
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        self.model = None
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)

    def check(self) -> None:
        harness.refuse_cpu_stand_in(self.gpus, self.cuda, f"torch {torch.__version__} sees no CUDA device here")
        if self.settings["bettertransformer"]:
            try:
                from optimum.bettertransformer import BetterTransformer  # noqa: F401
            except ImportError as exc:
                raise harness.CellUnsupported(
                    f"BetterTransformer unavailable: {exc} "
                    "(removed in optimum 2.0; transformers' native SDPA replaces it)"
                ) from None
        if self.settings["bnb_compute_dtype"] and self.settings["quantization"] != "bnb-4bit":
            raise harness.CellInvalid(
                "bitsandbytes has no compute dtype for this setting: BitsAndBytesConfig takes "
                "bnb_4bit_compute_dtype for 4-bit only; 8-bit matmuls compute in the model dtype"
            )
        if self.settings["quantization"] != "none" and not self.cuda:
            raise harness.CellUnsupported("bitsandbytes quantization needs a CUDA GPU in this tool")
        if self.settings["attention"] == "flash_attention_2":
            # the flash-attn distribution itself: flash-attn-4 also installs a flash_attn package (flash_attn.cute),
            # which transformers does not take for FlashAttention-2 (seen on the H200, 2026-12-03)
            if not installed_version("flash-attn"):
                built = flash_attn_build()
                raise harness.CellUnsupported(
                    "flash_attention_2 needs the flash-attn package, not installed here"
                    + (f" ({built})" if built else "")
                )
            if not self.cuda:
                raise harness.CellUnsupported("flash_attention_2 needs a CUDA GPU")
        if self.settings["attention"] == "flash_attention_4":
            if not installed_version("flash-attn-4"):
                raise harness.CellUnsupported(
                    "flash_attention_4 needs the flash-attn-4 package (flash_attn.cute), not installed here"
                )
            if not self.cuda:
                raise harness.CellUnsupported("flash_attention_4 needs a CUDA GPU (Hopper or newer)")
            if torch.cuda.get_device_capability(0)[0] < 9:
                name = torch.cuda.get_device_name(0)
                raise harness.CellUnsupported(f"flash_attention_4 needs a Hopper or newer GPU (sm_90+), not {name}")

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _quantization_config(self) -> Any:
        s = self.settings
        if s["quantization"] == "none":
            return None
        if s["quantization"] == "bnb-8bit":
            return transformers.BitsAndBytesConfig(load_in_8bit=True)
        compute = DTYPES[s["bnb_compute_dtype"]] if s["bnb_compute_dtype"] else None
        return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)

    def load(self) -> None:
        s = self.settings
        kwargs: dict[str, Any] = {"dtype": DTYPES[s["dtype"]], "attn_implementation": s["attention"]}
        quantization = self._quantization_config()
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        if self.cuda:
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).eval()
        if s["bettertransformer"]:
            from optimum.bettertransformer import BetterTransformer

            model = BetterTransformer.transform(model)
        if s["compile"]:
            model.forward = torch.compile(model.forward)
        self.model = model

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _grad_context(self) -> Any:
        mode = self.settings["grad_mode"]
        if mode == "no_grad":
            return torch.no_grad()
        if mode == "inference_mode":
            return torch.inference_mode()
        return contextlib.nullcontext()

    def generate(self, prompts: list[list[int]], new_tokens: int) -> harness.Timing:
        input_ids = torch.tensor(prompts, device=self.device)
        clock = FirstTokenClock(self.synchronize)
        options: dict[str, Any] = {
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "do_sample": False,
            "streamer": clock,
            "pad_token_id": self.tokenizer.eos_token_id,
            "disable_compile": True,  # compile only when the cell says so
        }
        if self.settings["cache"] == "static":
            options["cache_implementation"] = "static"
        self.synchronize()
        start = time.perf_counter()
        with self._grad_context():
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        self.synchronize()
        total = time.perf_counter() - start
        first = clock.first_token_at - start if clock.first_token_at else None
        return harness.Timing(total, first, output.shape[1] - input_ids.shape[1])

    def allocator_peak(self) -> dict[str, Any] | None:
        return harness.torch_cuda_peak(torch) if self.cuda else None

    def versions(self) -> dict[str, Any]:
        found = {
            "engine": "transformers",
            "engine_version": transformers.__version__,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        }
        for package in ("bitsandbytes", "flash-attn", "flash-attn-4", "nvidia-cutlass-dsl", "accelerate", "optimum"):
            if version := installed_version(package):
                found[package] = version
        if self.cuda:
            found["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return found


if __name__ == "__main__":
    harness.main(Engine)
