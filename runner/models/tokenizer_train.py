"""Train the real tokenizer that synthetic checkpoints ship: a Llama/Mistral SentencePiece BPE.

Mistral-family checkpoints (shisa-7b among them) ship a SentencePiece model,
``tokenizer.model``, and its Hugging Face translation, ``tokenizer.json``. Every
engine reads one of the two: transformers, vLLM and ExLlamaV2 the JSON,
llama.cpp's converter and CTranslate2 the SentencePiece model. Synthetic
checkpoints ship both, so each engine tokenises the way it would on the real
model, and the two must agree token for token.

The SentencePiece model is trained with Mistral's trainer options (BPE, byte
fallback, digits split, whitespace kept as is, ``<unk>``=0 ``<s>``=1 ``</s>``=2,
the 256 byte pieces next). The corpus supports about 15,500 pieces; the rest
of the architecture's vocabulary (shisa-7b has 120,128) is filled with
unreachable pieces ``<extra_N>`` of falling score, so token ids span the whole
embedding as in an extended real vocabulary. ``tokenizer.json`` is derived from
the SentencePiece model the way transformers' LlamaConverter does it: the same
vocabulary, merges ordered by the merged piece's score.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

CORPUS = Path(__file__).parent / "corpus" / "python-docs.txt"
SPECIALS = ["<unk>", "<s>", "</s>"]
LEARNED_PIECES_MAX = 32000  # Mistral's own vocabulary size; the corpus supports fewer.
TRAINER_OPTIONS = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "character_coverage": 1.0,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "hard_vocab_limit": False,
    "num_threads": 1,  # training with more threads gives another (equally valid) model
    "minloglevel": 2,
}


def generator_version() -> str:
    """What, beside this file and the corpus, decides the tokenizer's bytes."""
    return f"sentencepiece {sentencepiece.__version__}"


def _protobuf_piece(piece: str, score: float) -> bytes:
    """One ``ModelProto.pieces`` entry in protobuf wire format (type NORMAL, the default)."""
    text = piece.encode()
    body = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", score)
    return b"\x0a" + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def train_sentencepiece(vocab_size: int, corpus: Path = CORPUS) -> bytes:
    """The serialized SentencePiece model, with exactly ``vocab_size`` pieces."""
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_writer=buffer, vocab_size=min(vocab_size, LEARNED_PIECES_MAX), **TRAINER_OPTIONS
    )
    proto = buffer.getvalue()
    learned = sentencepiece.SentencePieceProcessor(model_proto=proto)
    count = learned.get_piece_size()
    if count > vocab_size:
        raise ValueError(f"the corpus gave {count} pieces, more than the vocabulary of {vocab_size}")
    lowest = min(learned.get_score(i) for i in range(count))
    # Repeated protobuf fields may continue anywhere in a message: appended pieces follow the learned ones.
    padding = b"".join(_protobuf_piece(f"<extra_{i}>", lowest - 1 - (i - count)) for i in range(count, vocab_size))
    return proto + padding


def _merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges as transformers' SentencePieceExtractor orders them: by merged piece score, then ids."""
    found: list[tuple[float, int, int, str, str]] = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[piece_id], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def tokenizer_from_sentencepiece(proto: bytes) -> Tokenizer:
    """The ``tokenizer.json`` translation of a SentencePiece BPE model (LlamaConverter's layout)."""
    spm = sentencepiece.SentencePieceProcessor(model_proto=proto)
    vocab = {spm.id_to_piece(i): i for i in range(spm.get_piece_size())}
    scores = [spm.get_score(i) for i in range(spm.get_piece_size())]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=_merges(vocab, scores), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    tok.add_special_tokens([AddedToken(piece, normalized=False, special=True) for piece in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def write_tokenizer(folder: Path, vocab_size: int, max_length: int) -> None:
    proto = train_sentencepiece(vocab_size)
    (folder / "tokenizer.model").write_bytes(proto)
    tokenizer_from_sentencepiece(proto).save(str(folder / "tokenizer.json"))
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
