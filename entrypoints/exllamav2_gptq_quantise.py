"""Quantise a checkpoint to GPTQ 4-bit with GPTQModel: the command exllamav2_gptq.py runs in the quantiser's Python.

GPTQModel pins a transformers release of its own (7.0.0, the newest that accepts
torch 2.11, needs 5.4-5.5 API) and imports torchvision, so it lives in a venv of
its own (the exllamav2 image's /opt/gptq-quantiser, layered over the engine's
venv for torch) and this script runs there, as a separate process. The recipe is
the one ExLlamaV2's GPTQ path is made for (and the seed's GPTQ row used): 4-bit,
symmetric, act-order (``desc_act``), one scale per group of 128 input columns
(64 or 32 where a layer is narrower), the LM head left in 16 bits. Calibration
samples are token windows of the text file given, so a run needs no dataset
download. GPTQModel saves the GPTQ (v1) layout: per linear layer ``qweight``
(int32, eight 4-bit codes along the input), ``qzeros``, ``scales`` (fp16) and
``g_idx``; config.json says ``quant_method: gptq``.

Usage: python exllamav2_gptq_quantise.py --model DIR --output DIR --calibration FILE [--samples N --tokens T]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import side_quantiser  # beside this script (its folder is on sys.path when it runs)
from side_quantiser import calibration_windows

BITS = 4
SKIP = ("lm_head",)


def group_size_for(in_features: set[int]) -> int:
    return side_quantiser.group_size_for(in_features, "GPTQ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--calibration", required=True, type=Path, help="plain text to calibrate on")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()

    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoConfig, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer(args.calibration.read_text(), add_special_tokens=False)["input_ids"]
    windows = calibration_windows(ids, args.samples, args.tokens)
    config = AutoConfig.from_pretrained(args.model)
    # every decoder linear reads the hidden size or the MLP's intermediate size
    group_size = group_size_for({config.hidden_size, config.intermediate_size})
    recipe = QuantizeConfig(bits=BITS, group_size=group_size, desc_act=True, sym=True, lm_head=False)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = GPTQModel.load(str(args.model), recipe, device=device)
    model.quantize([{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows], batch_size=1)
    model.save(str(args.output))
    tokenizer.save_pretrained(args.output)
    record = {
        "quantiser": "GPTQModel",
        "gptqmodel": importlib.metadata.version("gptqmodel"),
        "transformers": importlib.metadata.version("transformers"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "recipe": {"bits": BITS, "group_size": group_size, "desc_act": True, "sym": True, "skipped": list(SKIP)},
        "calibration": {"file": args.calibration.name, "samples": len(windows), "tokens_per_sample": args.tokens},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.output / "quantised_by.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
