"""Synthetic checkpoints: a real transformers folder with a trained tokenizer and random bf16 weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from runner.models import random_safetensors, synthetic, tokenizer_train
from runner.models.architectures import ARCHITECTURES, parameter_count, parameter_shapes
from runner.models.fingerprint import fingerprint

TINY = ARCHITECTURES["tiny-mistral"]
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def test_files_exist(tiny_model, model_store):
    assert tiny_model.parent == model_store / "synthetic"
    assert tiny_model.name == f"tiny-mistral-{synthetic.store_key('tiny-mistral')}"
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors",
        "synthetic.json",
    ):
        assert (tiny_model / name).is_file(), name
    assert json.loads((tiny_model / "config.json").read_text()) == TINY
    marker = json.loads((tiny_model / "synthetic.json").read_text())
    assert marker["synthetic"] is True
    assert marker["architecture"] == "tiny-mistral"
    assert marker["parameters"] == parameter_count(TINY) == 598_336
    assert marker["files"] == ["model.safetensors"]
    assert marker["store_key"] == synthetic.store_key("tiny-mistral")
    assert json.loads((tiny_model / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    # no scratch folder left behind
    assert not list(model_store.glob("synthetic/.building-*"))


def test_second_materialise_reuses_the_folder(tiny_model, model_store):
    weights = tiny_model / "model.safetensors"
    before = weights.stat().st_mtime_ns
    messages: list[str] = []
    again = synthetic.materialise("tiny-mistral", model_store, log=messages.append)
    assert again == tiny_model
    assert weights.stat().st_mtime_ns == before
    assert messages == []  # nothing was built


def test_materialise_logs_when_it_builds(tmp_path, tiny_model):
    messages: list[str] = []
    folder = synthetic.materialise("tiny-mistral", tmp_path, log=messages.append)
    assert len(messages) == 1
    assert messages[0].startswith("materialising synthetic tiny-mistral (0.6 M parameters) into ")
    # same key, same bytes: the checkpoint is reproducible
    assert (folder / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert (folder / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    assert (folder / "tokenizer.model").read_bytes() == (tiny_model / "tokenizer.model").read_bytes()
    # and its fingerprint with them, so what is derived from it keeps its key on another machine
    assert fingerprint(folder) == fingerprint(tiny_model)
    (folder / "config.json").write_text((folder / "config.json").read_text())  # edited in place
    assert fingerprint(folder) != fingerprint(tiny_model)


def test_store_key_is_stable_and_per_architecture():
    assert synthetic.store_key("tiny-mistral") == synthetic.store_key("tiny-mistral")
    assert len(synthetic.store_key("tiny-mistral")) == 16
    assert synthetic.store_key("tiny-mistral") != synthetic.store_key("shisa-7b-v1")


def test_tokenizer_round_trip(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(SENTENCE)["input_ids"]
    assert ids[0] == 1 == tokenizer.bos_token_id
    assert 1 not in ids[1:]
    assert tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id == 0
    assert tokenizer.decode(ids, skip_special_tokens=True) == SENTENCE
    assert len(tokenizer) == TINY["vocab_size"] == 4096
    assert max(tokenizer.get_vocab().values()) == TINY["vocab_size"] - 1
    # BPE merges learned from the corpus: common words are single pieces, not characters
    assert len(ids) < len(SENTENCE)
    pieces = [tokenizer.convert_tokens_to_ids("▁the"), tokenizer.convert_tokens_to_ids("▁function")]
    assert tokenizer.unk_token_id not in pieces
    assert tokenizer("the function")["input_ids"] == [1, *pieces]
    # bytes outside the corpus fall back to byte tokens and still round-trip
    unusual = "naïve café ✓ 日本語"
    assert tokenizer.decode(tokenizer(unusual)["input_ids"], skip_special_tokens=True) == unusual


def agreement_texts() -> list[str]:
    """Text the two tokenizer files must split alike: the benchmark prompt, corpus and unseen text."""
    prompt = (Path(__file__).resolve().parents[1] / "entrypoints" / "prompt.txt").read_text()
    corpus = tokenizer_train.CORPUS.read_text().splitlines()
    unseen = [
        "  two leading spaces",
        "trailing  ",
        "日本語のテキスト、こんにちは世界",
        "emoji 🤖 x",
        "12345 678.9",
        "a\tb\nc",
        "",
    ]
    return [prompt, *prompt.splitlines(), *corpus[:1500:3], *unseen]


def test_sentencepiece_model_and_tokenizer_json_agree(tiny_model):
    """Engines read one file or the other (llama.cpp's converter the .model, transformers the .json)."""
    spm = sentencepiece.SentencePieceProcessor(model_file=str(tiny_model / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert spm.get_piece_size() == len(tokenizer) == TINY["vocab_size"]
    for text in agreement_texts():
        assert tokenizer(text)["input_ids"] == [1, *spm.encode(text)], text[:80]


def test_shisa_vocabulary_is_full_size_and_padding_is_unreachable():
    proto = tokenizer_train.train_sentencepiece(120128)
    spm = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert spm.get_piece_size() == 120128
    assert [spm.id_to_piece(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    learned = next(i for i in range(spm.get_piece_size()) if spm.id_to_piece(i).startswith("<extra_"))
    assert 10_000 < learned < 32_000
    assert spm.id_to_piece(120127) == "<extra_120127>"
    scores = [spm.get_score(i) for i in range(259, 120128)]
    assert scores == sorted(scores, reverse=True)  # merge priority falls with the id, padding last
    hf = tokenizer_train.tokenizer_from_sentencepiece(proto)
    assert hf.get_vocab_size() == 120128
    for text in agreement_texts()[:200]:
        ids = spm.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert all(i < learned for i in ids)


def test_model_loads_with_the_architecture(tiny_model, tiny_loaded):
    config = tiny_loaded.config
    assert type(tiny_loaded).__name__ == "MistralForCausalLM"
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "sliding_window",
        "rms_norm_eps",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    ):
        assert getattr(config, key) == TINY[key], key
    assert config.model_type == "mistral"
    assert tiny_loaded.num_parameters() == parameter_count(TINY)
    assert tiny_loaded.dtype == torch.bfloat16
    state = tiny_loaded.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == parameter_shapes(TINY)
    # it generates
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = torch.tensor([tokenizer(SENTENCE)["input_ids"]])
    out = tiny_loaded.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=2)
    assert out.shape == (1, prompt.shape[1] + 4)


def test_weights_have_the_documented_scale(tiny_loaded):
    for name, tensor in tiny_loaded.state_dict().items():
        values = tensor.float().abs()
        if name.endswith("norm.weight"):
            assert bool((tensor == 1.0).all()), name
        else:
            assert values.min().item() >= 2**-9, name
            assert values.max().item() < 2**-5, name
            # random signs, at every position: an earlier generator drew 63-bit numbers, so every
            # fourth weight was positive, which gave each layer's output a common offset that grew
            # through the layers past FP16's range (ExLlamaV2's converter aborted on inf)
            positive = (tensor.flatten() > 0).float()
            for phase in range(4):
                assert 0.45 < positive[phase::4].mean().item() < 0.55, (name, phase)
            assert abs(tensor.float().mean().item()) < 0.05 * tensor.float().pow(2).mean().sqrt().item(), name


def test_layers_get_different_random_weights(tiny_model):
    with safe_open(str(tiny_model / "model.safetensors"), "pt") as weights:
        layer0 = weights.get_tensor("model.layers.0.mlp.up_proj.weight")
        layer1 = weights.get_tensor("model.layers.1.mlp.up_proj.weight")
    assert not torch.equal(layer0, layer1)


def test_shisa_parameter_count_and_shapes():
    shisa = ARCHITECTURES["shisa-7b-v1"]
    assert parameter_count(shisa) == 7_963_676_672
    shapes = parameter_shapes(shisa)
    assert shapes["model.embed_tokens.weight"] == (120128, 4096)
    assert shapes["lm_head.weight"] == (120128, 4096)  # untied
    assert list(shapes)[-1] == "lm_head.weight"
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads x 128
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (4096, 14336)
    assert "model.layers.32.input_layernorm.weight" not in shapes
    assert len(shapes) == 2 + 9 * 32 + 1


def test_tied_embeddings_have_no_lm_head():
    tied = {**TINY, "tie_word_embeddings": True}
    assert "lm_head.weight" not in parameter_shapes(tied)
    assert parameter_count(TINY) - parameter_count(tied) == 4096 * 64


def test_plan_shards(monkeypatch):
    monkeypatch.setattr(random_safetensors, "SHARD_BYTES", 100)
    shapes = {"a": (10,), "b": (20,), "c": (60,), "d": (5,)}  # 20, 40, 120, 10 bytes
    assert random_safetensors.plan_shards(random_safetensors.bf16_tensors(shapes)) == [["a", "b"], ["c"], ["d"]]
    int32 = {"a": random_safetensors.Tensor((10,), "I32", "bits"), "b": random_safetensors.Tensor((20,), "I32", "bits")}
    assert random_safetensors.plan_shards(int32) == [["a"], ["b"]]  # 40 + 80 bytes


def test_sharded_checkpoint_loads(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setattr(random_safetensors, "SHARD_BYTES", 200_000)
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        shutil.copy(tiny_model / name, folder / name)
    shapes = parameter_shapes(TINY)
    files = random_safetensors.write_random_checkpoint(
        folder, random_safetensors.bf16_tensors(shapes), seed=synthetic.SEED
    )
    assert len(files) > 2
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(shapes)
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == 2 * parameter_count(TINY)
    for file_name in files:
        size = (folder / file_name).stat().st_size
        header = int.from_bytes((folder / file_name).read_bytes()[:8], "little")
        assert header % 8 == 0
        assert size - 8 - header <= 200_000 or len([n for n, f in index["weight_map"].items() if f == file_name]) == 1

    sharded = AutoModelForCausalLM.from_pretrained(folder)
    single = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sharded.num_parameters() == parameter_count(TINY)
    # same seed, same bytes, however the tensors are split into files
    single_state = single.state_dict()
    for name, tensor in sharded.state_dict().items():
        assert torch.equal(tensor, single_state[name]), name
