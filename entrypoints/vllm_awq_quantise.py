"""Quantise a checkpoint to AWQ 4-bit with llm-compressor: the command vllm_awq.py runs in the quantiser's Python.

llm-compressor pins another compressed-tensors than vLLM, so it lives in a venv
of its own (the vllm image's /opt/awq-quantiser, layered over the engine's venv
for torch and the rest) and this script runs there, as a separate process. The
recipe is llm-compressor's AWQ: activation-aware scales (AWQModifier) and then
4-bit weights with zero points, one scale per group of 128 (W4A16_ASYM; 64 or 32 where
layers are narrower), the
LM head left in 16 bits. Calibration samples are token windows of the text file
given, so a run needs no dataset download. The output is a compressed-tensors
checkpoint (``pack-quantized``), which vLLM reads as it reads any AWQ model.

Usage: python vllm_awq_quantise.py --model DIR --output DIR --calibration FILE [--samples N --tokens T]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import side_quantiser  # beside this script (its folder is on sys.path when it runs)
from side_quantiser import calibration_windows

SCHEME = "W4A16_ASYM"
IGNORE = ["lm_head"]


def group_size_for(in_features: set[int]) -> int:
    return side_quantiser.group_size_for(in_features, "AWQ")


def without_pinned_memory() -> None:
    """llm-compressor 0.14 pins its calibration activations for host-to-GPU copies; with no GPU,
    pin_memory() raises "Cannot access accelerator device when none is available": skip it there."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--calibration", required=True, type=Path, help="plain text to calibrate on")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()

    import llmcompressor
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        without_pinned_memory()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer(args.calibration.read_text(), add_special_tokens=False)["input_ids"]
    windows = calibration_windows(ids, args.samples, args.tokens)
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    group_size = group_size_for({m.in_features for n, m in linears.items() if n.split(".")[-1] not in IGNORE})
    scheme = preset_name_to_scheme(SCHEME, ["Linear"])
    scheme.weights.group_size = group_size
    recipe = [
        AWQModifier(duo_scaling=True),
        QuantizationModifier(config_groups={"group_0": scheme}, ignore=IGNORE),
    ]
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(windows),
        max_seq_length=args.tokens,
        shuffle_calibration_samples=False,
    )
    model.save_pretrained(args.output, save_compressed=True)
    tokenizer.save_pretrained(args.output)
    record = {
        "quantiser": "llm-compressor",
        "llmcompressor": llmcompressor.__version__,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "recipe": {"awq": {"duo_scaling": True}, "scheme": SCHEME, "group_size": group_size, "ignore": IGNORE},
        "calibration": {"file": args.calibration.name, "samples": len(windows), "tokens_per_sample": args.tokens},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.output / "quantised_by.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
