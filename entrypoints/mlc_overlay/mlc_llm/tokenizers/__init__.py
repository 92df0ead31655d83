"""mlc_llm.tokenizers without tokenizers-cpp: only what gen_config uses, the tokenizer's info.

A port of DetectTokenizerInfo (mlc-llm cpp/tokenizers/tokenizers.cc): how the tokenizer's
pieces turn back into text (byte fallback or byte level) and whether it prepends or strips a
space, read from tokenizer.json. Cells tokenise with the checkpoint's own tokenizer
(transformers), not through this module.
"""

import json
import os
from dataclasses import asdict, dataclass


@dataclass
class TokenizerInfo:
    token_postproc_method: str = "byte_fallback"
    prepend_space_in_encode: bool = False
    strip_space_in_decode: bool = False

    def asjson(self):
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(s):
        return TokenizerInfo(**json.loads(s))


def detect_tokenizer_info(path):
    info = TokenizerInfo()
    if not os.path.isdir(path):
        path = os.path.dirname(path)
    p = os.path.join(path, "tokenizer.json")
    if not os.path.exists(p):
        return info
    with open(p, encoding="utf-8") as handle:
        obj = json.load(handle)
    dec = obj.get("decoder")
    if isinstance(dec, dict):
        decs = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
        for d in decs:
            if d.get("type") == "ByteLevel":
                info.token_postproc_method = "byte_level"
            elif d.get("type") == "ByteFallback":
                info.token_postproc_method = "byte_fallback"
        for d in decs:
            if d.get("type") == "Strip" and d.get("content") == " " and d.get("start") == 1 and d.get("stop") == 0:
                info.strip_space_in_decode = True
                break
    norm = obj.get("normalizer")
    if isinstance(norm, dict):
        norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
        for nm in norms:
            if nm.get("type") == "Prepend" and nm.get("prepend") == "\u2581":
                info.prepend_space_in_encode = True
                break
    return info


class Tokenizer:  # only the static method used by the compile path
    detect_tokenizer_info = staticmethod(detect_tokenizer_info)

    def __init__(self, *a, **k):
        raise NotImplementedError("mlc.Tokenizer needs tokenizers-cpp (libmlc_llm.so)")
