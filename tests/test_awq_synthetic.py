"""The synthetic AWQ checkpoint: AutoAWQ's GEMM layout, values in range, built once, chosen per cell."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from runner.engines.vllm import VLLM
from runner.models import awq_synthetic, derived
from runner.models.architectures import ARCHITECTURES
from runner.models.fingerprint import fingerprint

SHISA = ARCHITECTURES["shisa-7b-v1"]
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ packs output columns 0,2,4,6,1,3,5,7 into nibbles 0..7


def unpack(words: np.ndarray) -> np.ndarray:
    """int32 [rows, cols/8] -> 4-bit codes [rows, cols] in column order (undoing AWQ's interleave)."""
    nibbles = (words.view(np.uint32)[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF
    codes = np.empty_like(nibbles)
    codes[..., AWQ_ORDER] = nibbles
    return codes.reshape(words.shape[0], -1)


def test_shisa_layout_matches_autoawq_gemm():
    assert awq_synthetic.group_size_for(SHISA) == 128
    tensors = awq_synthetic.awq_tensors(SHISA, 128)
    q = tensors["model.layers.0.self_attn.q_proj.qweight"]
    assert (q.shape, q.dtype) == ((4096, 512), "I32")
    assert tensors["model.layers.0.self_attn.k_proj.qzeros"].shape == (32, 1024 // 8)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (14336 // 128, 4096)
    assert tensors["model.layers.0.mlp.down_proj.scales"].fill == "scale"
    assert tensors["model.embed_tokens.weight"].dtype == "F16"
    assert tensors["lm_head.weight"].shape == (120128, 4096)  # the head stays fp16, as AutoAWQ leaves it
    assert tensors["model.norm.weight"].fill == "ones"
    assert not any(name.endswith("proj.weight") for name in tensors)
    assert len(tensors) == 2 + 32 * (2 + 7 * 3) + 1
    four_bit = sum(t.nbytes for n, t in tensors.items() if n.endswith("qweight"))
    assert four_bit == 32 * (4096 * (4096 + 2 * 1024 + 4096) + 3 * 4096 * 14336) // 2


def test_group_size_falls_back_to_what_divides_the_inputs():
    assert awq_synthetic.group_size_for(ARCHITECTURES["tiny-mistral"]) == 64  # inputs 64 and 128
    with pytest.raises(ValueError, match="no AWQ group size"):
        awq_synthetic.group_size_for({**ARCHITECTURES["tiny-mistral"], "hidden_size": 48})


def model_record(folder: Path, store: Path, synthetic: bool = True) -> dict:
    derived = store / "derived"
    derived.mkdir(parents=True, exist_ok=True)
    return {
        "name": folder.name,
        "path": str(folder),
        "synthetic": synthetic,
        "fingerprint": fingerprint(folder),
        "derived_dir": str(derived),
    }


def test_materialised_checkpoint_is_a_complete_awq_folder(tmp_path, tiny_model):
    model = model_record(tiny_model, tmp_path)
    folder = awq_synthetic.materialise(model, log=lambda _: None)
    assert folder.parent == tmp_path / "derived" / "awq"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 64,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    assert config["torch_dtype"] == "float16"
    assert config["hidden_size"] == 64
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (tiny_model / name).read_bytes()
    assert json.loads((folder / "synthetic.json").read_text())["synthetic"] is True
    assert awq_synthetic.is_awq_checkpoint(folder) and not awq_synthetic.is_awq_checkpoint(tiny_model)

    with safe_open(folder / "model.safetensors", "np") as f:
        names = set(f.keys())
        qweight = f.get_tensor("model.layers.1.mlp.up_proj.qweight")
        qzeros = f.get_tensor("model.layers.1.mlp.up_proj.qzeros")
        scales = f.get_tensor("model.layers.1.mlp.up_proj.scales")
        norm = f.get_tensor("model.layers.1.post_attention_layernorm.weight")
        embed = f.get_tensor("model.embed_tokens.weight")
    assert names == set(awq_synthetic.awq_tensors(config, 64))
    assert (qweight.dtype, qweight.shape, qzeros.shape, scales.shape) == (np.int32, (64, 16), (1, 16), (1, 128))
    assert (norm == 1).all() and norm.dtype == np.float16
    assert embed.dtype == np.float16 and np.abs(embed).min() >= 2**-9 and np.abs(embed).max() < 2**-5
    assert (scales > 0).all() and scales.min() >= 2**-12 and scales.max() < 2**-8
    codes, zeros = unpack(qweight), unpack(qzeros)
    assert set(np.unique(codes)) == set(range(16))  # every 4-bit code occurs
    weight = (codes.astype(np.float32) - np.repeat(zeros, 64, axis=0)) * np.repeat(scales, 64, axis=0)
    assert weight.shape == (64, 128)  # [in, out], as AWQ stores it
    assert 1e-3 < np.abs(weight).mean() < 3e-2  # a trained model's weight scale


def test_materialise_builds_once_and_follows_the_source(tmp_path, tiny_model):
    model = model_record(tiny_model, tmp_path)
    logged: list[str] = []
    first = awq_synthetic.materialise(model, log=logged.append)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert awq_synthetic.materialise(model, log=logged.append) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(logged) == 1
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model, changed)
    os.utime(changed / "model.safetensors", ns=(1, 1))
    assert awq_synthetic.materialise(model_record(changed, tmp_path), log=logged.append) != first


def test_vllm_cells_pick_their_checkpoint(tmp_path, tiny_model):
    settings = VLLM.resolve({"quantization": "awq"})
    assert VLLM.derived_checkpoint(settings) == "awq"
    assert VLLM.derived_checkpoint(VLLM.resolve({"quantization": "awq_marlin"})) == "awq"
    assert VLLM.derived_checkpoint(VLLM.resolve({"quantization": "fp8"})) is None

    def for_cell(s, model):
        return derived.cell_model(VLLM.derived_checkpoint(s), model, lambda _: None)

    model = model_record(tiny_model, tmp_path)
    made = for_cell(settings, model)
    assert Path(made["path"]).parent == tmp_path / "derived" / "awq"
    assert made["derived_from"] == str(tiny_model) and made["synthetic"] is True
    assert made["name"] == f"{model['name']} (AWQ 4-bit)"
    assert made["fingerprint"] == fingerprint(Path(made["path"]))
    assert for_cell(VLLM.resolve({}), model) is model  # no AWQ: the matrix's model
    assert for_cell(settings, made) is made  # already AWQ: used as it is
    real = model_record(tiny_model, tmp_path, synthetic=False)
    assert for_cell(settings, real) is real  # a real checkpoint: the cell quantises it (vllm_awq)


def test_an_unknown_derived_kind_names_the_known_ones(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="no maker for derived checkpoints of kind 'exl2'; known: awq"):
        derived.cell_model("exl2", model_record(tiny_model, tmp_path))
