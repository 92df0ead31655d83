"""Run one of gpt-fast's own scripts for a checkpoint its ModelArgs table does not know.

    python gptfast_tool.py --home H --model-args F run SCRIPT [ARGS...]
    python gptfast_tool.py --home H --model-args F quantize CHECKPOINT MODE GROUPSIZE LABEL

Before anything of gpt-fast runs, the ModelArgs that gptfast_checkpoint.model_args derived
from the checkpoint's config.json (F: {"name", "args"}) are added to gpt-fast's
``model.transformer_configs`` under the checkpoint folder's exact name, which
``ModelArgs.from_name`` looks up before its substring match. ``run`` then executes SCRIPT
(scripts/convert_hf_checkpoint.py, generate.py) as ``__main__`` with ARGS, unchanged;
``quantize`` calls quantize.py's own ``quantize()``.

int4 on current torch: quantize.py passes the int32 codes to
``torch.ops.aten._convert_weight_to_int4pack``, which since torch 2.5 takes them two to a byte
(uint8, shape N x K/2) and refuses int32 ("Expected in.dtype() == at::kByte"). The one patch
here replaces quantize.py's ``prepare_int4_weight_and_scales_and_zeros`` with the same steps
plus that packing (high nibble = even column, as torchao packs for the same op), and checks
the first layer it packs: torch's int4 matmul on the packed weight must match the weight
dequantised by quantize.py's own group_dequantize_tensor_from_qparams (else the other nibble
order is tried, and failing both the quantisation stops). The check prints one
``GPTFAST_INT4_CHECK {json}`` line. Nothing in the gpt-fast tree is modified.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import gptfast_checkpoint

CHECK_TOLERANCE = 0.05  # relative error of the int4 matmul against the dequantised weight (bf16 noise is ~0.005)


def register(home: Path, args_file: Path) -> str:
    """gptfast_checkpoint.register before any gpt-fast script runs (the module they all look ModelArgs up in)."""
    sys.path.insert(0, str(home))
    import model  # gpt-fast's model.py

    if args_file.name != gptfast_checkpoint.ARGS_FILE:
        raise SystemExit(f"--model-args must name a {gptfast_checkpoint.ARGS_FILE}, got {args_file}")
    return gptfast_checkpoint.register(model, args_file.parent)


def torch_packs_bytes(version: str) -> bool:
    """torch >= 2.5 takes _convert_weight_to_int4pack's input as uint8, two codes a byte."""
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 5)


def patch_int4_packing(quantize, torch) -> dict:
    """Replace quantize.prepare_int4_weight_and_scales_and_zeros (see the module docstring); returns the
    record the first packed layer's check fills in."""
    record: dict = {"patched": torch_packs_bytes(torch.__version__), "torch": torch.__version__}
    if not record["patched"]:
        return record
    orders = {"even-high": lambda w: w[:, ::2] << 4 | w[:, 1::2], "odd-high": lambda w: w[:, 1::2] << 4 | w[:, ::2]}

    def prepare(weight_bf16, groupsize, inner_k_tiles):
        scales, zeros = quantize.get_group_qparams(weight_bf16, 4, groupsize)
        codes = quantize.group_quantize_tensor_from_qparams(weight_bf16, scales, zeros, 4, groupsize)
        scales_and_zeros = quantize.pack_scales_and_zeros(scales, zeros)
        for name in [record["order"]] if "order" in record else list(orders):
            packed = torch.ops.aten._convert_weight_to_int4pack(orders[name](codes).to(torch.uint8), inner_k_tiles)
            if "order" in record:
                return packed, scales_and_zeros
            error = _matmul_error(quantize, torch, codes, scales, zeros, packed, scales_and_zeros, groupsize)
            record.setdefault("tried", {})[name] = error
            if error < CHECK_TOLERANCE:
                record.update(order=name, relative_error=error, shape=list(weight_bf16.shape))
                print(gptfast_checkpoint.CHECK_PREFIX + json.dumps(record), flush=True)
                return packed, scales_and_zeros
        tried = record["tried"]
        raise RuntimeError(f"int4 packing check failed: relative errors {tried} (tolerance {CHECK_TOLERANCE})")

    quantize.prepare_int4_weight_and_scales_and_zeros = prepare
    return record


def _matmul_error(quantize, torch, codes, scales, zeros, packed, scales_and_zeros, groupsize) -> float:
    """Relative error of torch's int4 matmul on the packed weight against x @ dequantised weight."""
    dequantised = quantize.group_dequantize_tensor_from_qparams(codes, scales, zeros, 4, groupsize).float()
    x = torch.randn(8, codes.shape[1], device=codes.device, dtype=torch.bfloat16)
    ours = torch.ops.aten._weight_int4pack_mm(x, packed, groupsize, scales_and_zeros).float()
    reference = x.float() @ dequantised.t()
    return float((ours - reference).norm() / reference.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="the gpt-fast source tree")
    parser.add_argument("--model-args", type=Path, required=True, help='JSON {"name", "args"} to register')
    parser.add_argument("action", choices=("run", "quantize"))
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    register(options.home, options.model_args)
    if options.action == "run":
        script, *args = options.rest
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")
        return
    checkpoint, mode, groupsize, label = options.rest
    import quantize  # gpt-fast's quantize.py
    import torch

    if mode == "int4":
        patch_int4_packing(quantize, torch)
    quantize.quantize(Path(checkpoint), mode, int(groupsize), label=label)


if __name__ == "__main__":
    main()
