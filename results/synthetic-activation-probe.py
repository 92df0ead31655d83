"""How large a synthetic checkpoint's activations grow, layer by layer, as ExLlamaV2's converter sees them.

ExLlamaV2's converter (0.3.2) runs the unquantised model in FP16 over its standard
calibration rows before measuring each layer, and aborts when more than 0.5 % of a
state is inf. This script repeats that forward pass on the CPU in FP32 for a
Mistral-family checkpoint (the runner's synthetic one, or any other): the same 19
calibration rows of 512 tokens (ExLlamaV2's standard_cal_data, read from its wheel),
its attention without a mask (what its torch fallback runs there), and prints per
layer the largest magnitude and RMS of each state the converter checks, marking the
share above FP16's largest value (65504). About 20 s a layer on 2 cores.

    python results/synthetic-activation-probe.py MODEL_DIR CAL_DATA_DIR [LAYERS]

CAL_DATA_DIR: exllamav2/conversion/standard_cal_data from exllamav2's wheel
(``unzip exllamav2-0.3.2-py3-none-any.whl 'exllamav2/conversion/standard_cal_data/*'``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

CONTEXT = 512
FP16_MAX = 65504.0


class Calibration:
    """ExLlamaV2's standard calibration rows for its measurement pass (conversion/tokenize.py)."""

    def __init__(self, model: Path, data: Path):
        self.tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        config = json.loads((model / "config.json").read_text())
        self.bos, self.eos = config["bos_token_id"], config["eos_token_id"]
        self.data = data

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def chunks(self, text: str, count: int) -> list[list[int]]:
        ids = self.encode(text)
        return [ids[i * CONTEXT : (i + 1) * CONTEXT] for i in range(count)]

    def articles(self, articles: list[str], count: int) -> list[list[int]]:
        tokenised = [self.encode(a, bos=True, eos=True) for a in articles]
        rows, index = [], 0
        for r in range(count):
            row: list[int] = []
            while len(row) < CONTEXT + 1:
                row += tokenised[index]
                index += 1
            rows.append(row[1 : CONTEXT + 1] if r < count // 2 else row[:CONTEXT])
        return rows

    def rows(self) -> torch.Tensor:
        read = lambda name: (self.data / name).read_text(encoding="utf8")  # noqa: E731
        rows = self.chunks("\n\n".join(read("c4.utf8").splitlines(keepends=True)), 2)
        rows += self.articles([a[a.find("\n") + 1 :] for a in read("wiki.utf8").split("</doc>\n")], 4)
        rows += self.chunks(read("code.utf8"), 3)
        rows += self.articles([a.strip() for a in read("tiny.utf8").split("<|endoftext|>")], 2)
        multilingual = self.encode(read("multilingual.utf8"))
        rows += [multilingual[i * CONTEXT : (i + 1) * CONTEXT] for i in range(3)]
        pieces = [multilingual[i * 128 : (i + 1) * 128] for i in range(len(multilingual) // 128)]
        random.seed(69420)
        rows.append([token for _ in range(CONTEXT // 128) for token in pieces[random.randint(0, len(pieces) - 1)]])
        rows += [torch.randint(0, self.tokenizer.get_vocab_size(), (CONTEXT,)).tolist() for _ in range(2)]
        rows += self.chunks(read("technical.utf8"), 2)
        return torch.tensor(rows)


class Weights:
    def __init__(self, model: Path):
        self.model = model
        self.index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
        self.files: dict[str, object] = {}

    def __call__(self, name: str) -> torch.Tensor:
        file = self.index[name]
        if file not in self.files:
            self.files[file] = safe_open(str(self.model / file), framework="pt")
        return self.files[file].get_tensor(name).float()


def report(layer: int, part: str, states: dict[str, torch.Tensor]) -> None:
    fields = [f"L{layer:02d} {part}"]
    for name, value in states.items():
        over = (value.abs() > FP16_MAX).float().mean().item()
        fields.append(
            f"{name} max {value.abs().max().item():9.2f} rms {value.pow(2).mean().sqrt().item():9.3f}"
            + (f" ABOVE FP16 {over * 100:.3f}%" if over else "")
        )
    print(" | ".join(fields), flush=True)


def main(model: Path, data: Path, layers: int) -> None:
    config = json.loads((model / "config.json").read_text())
    hidden, heads, kv_heads, head_dim = (
        config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    )  # fmt: skip
    ids = Calibration(model, data).rows()
    rows = ids.shape[0]
    print(f"calibration rows {tuple(ids.shape)}, model {model}", flush=True)
    weight = Weights(model)
    eps = config["rms_norm_eps"]
    norm = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    inverse = 1.0 / (config["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.arange(CONTEXT).float()[:, None] * inverse[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(t: torch.Tensor) -> torch.Tensor:
        first, second = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return t * cos + torch.cat([-second, first], -1) * sin

    x = weight("model.embed_tokens.weight")[ids]
    for layer in range(min(layers, config["num_hidden_layers"])):
        start = time.perf_counter()
        p = f"model.layers.{layer}."
        post = norm(x, weight(p + "input_layernorm.weight"))
        q = (post @ weight(p + "self_attn.q_proj.weight").T).view(rows, CONTEXT, heads, head_dim).transpose(1, 2)
        k = (post @ weight(p + "self_attn.k_proj.weight").T).view(rows, CONTEXT, kv_heads, head_dim).transpose(1, 2)
        v = (post @ weight(p + "self_attn.v_proj.weight").T).view(rows, CONTEXT, kv_heads, head_dim).transpose(1, 2)
        repeat = heads // kv_heads
        attention = torch.nn.functional.scaled_dot_product_attention(
            rope(q), rope(k).repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
        )
        attention = attention.transpose(1, 2).reshape(rows, CONTEXT, hidden)
        x = x + attention @ weight(p + "self_attn.o_proj.weight").T
        report(layer, "attn", {"post_norm": post, "attn_output": attention, "hidden_states": x})
        post = norm(x, weight(p + "post_attention_layernorm.weight"))
        gate, up = post @ weight(p + "mlp.gate_proj.weight").T, post @ weight(p + "mlp.up_proj.weight").T
        pre_down = torch.nn.functional.silu(gate) * up
        x = x + pre_down @ weight(p + "mlp.down_proj.weight").T
        report(layer, "mlp ", {"post_norm": post, "pre_down": pre_down, "hidden_states": x})
        print(f"    {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 32)
