"""Train the real tokenizer that synthetic checkpoints ship: Llama/Mistral-style BPE.

Layout as in Mistral's tokenizer: <unk>=0, <s>=1, </s>=2, the 256 byte-fallback
tokens <0x00>..<0xFF> next, then BPE pieces learned from the corpus with a
Metaspace ("▁") pre-tokenizer. If the corpus supports fewer pieces than the
architecture's vocabulary (shisa-7b has 120,128), the rest are filled with
unreachable pieces "<extra_N>", so token ids span the model's whole vocabulary
as in a padded real vocabulary. The tokenizer is written as tokenizer.json plus
tokenizer_config.json and loads with transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = Path(__file__).parent / "corpus" / "python-docs.txt"
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


def _learn_bpe(vocab_size: int, corpus: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    scratch = Tokenizer(models.BPE(unk_token="<unk>"))
    scratch.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False, min_frequency=2)
    scratch.train([str(corpus)], trainer)
    learned = json.loads(scratch.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return learned["vocab"], merges


def _vocabulary(learned: dict[str, int], vocab_size: int) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for piece in SPECIALS + BYTE_TOKENS:
        vocab[piece] = len(vocab)
    for piece, _ in sorted(learned.items(), key=lambda item: item[1]):
        if piece not in vocab and len(vocab) < vocab_size:
            vocab[piece] = len(vocab)
    while len(vocab) < vocab_size:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    return vocab


def build_tokenizer(vocab_size: int, corpus: Path = CORPUS) -> Tokenizer:
    learned, merges = _learn_bpe(vocab_size, corpus)
    vocab = _vocabulary(learned, vocab_size)
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def write_tokenizer(folder: Path, vocab_size: int, max_length: int) -> None:
    build_tokenizer(vocab_size).save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
