"""mlc_llm's compile path on PyPI's apache-tvm, without MLC's C++ engine: a stand-in package __init__.

MLC's own wheels (mlc-llm and its TVM fork, mlc-ai) live on MLC's wheel index; where
that cannot be reached, mlc-llm's Python source at a pinned commit (MLC_LLM_SOURCE: the
checkout's root, or its python/mlc_llm folder) runs on apache-tvm 0.27 from PyPI with
this folder first on PYTHONPATH. Its convert_weight, gen_config and compile need no
C++ engine; mlc_llm's real __init__ imports mlc_llm.serve, whose registered objects
need libmlc_llm.so, so this file replaces it, and appends the real package folder to
this package's path so that every other module comes from the source.

What it adds, each only where apache-tvm lacks it (0.27 renamed or moved these names;
mlc-llm at 79d603f0 still uses the old ones in the modules named):

- tvm.relax.Constant, tvm.relax.StringImm: now tvm.ir.Constant, tvm.ir.StringImm (nn/rnn_state.py, nn/kv_cache.py)
- tvm.relax.DataTypeImm: a dtype literal is now GenericConst(DataType, AnyType()), as
  0.27's own builtin.alloc_tensor makes it (nn/kv_cache.py)
- tvm.ir.Var.name_hint: Relax and TIR variables are one tvm.ir.Var, whose name is ``name``
  (compiler_pass/scatter_tuple_get_item.py)
- tvm.tirx.SBlock, tvm.tirx.SBlockRealize: moved to tvm.s_tir (compiler_pass/fuse_dequantize_transpose.py)
- mlc_llm.tokenizers: the C++ tokenizer's info detection in Python (tokenizers/__init__.py)

With MLC's own wheels none of this is needed: the runner puts this folder on the path only
when ``import mlc_llm`` fails without it.
"""

import os
from pathlib import Path

os.environ.setdefault("SKIP_LOADING_MLCLLM_SO", "1")

import tvm
import tvm.relax
import tvm.s_tir
import tvm.tirx

if not hasattr(tvm.relax, "Constant"):
    tvm.relax.Constant = tvm.ir.Constant
if not hasattr(tvm.relax, "StringImm"):
    tvm.relax.StringImm = tvm.ir.StringImm
if not hasattr(tvm.relax, "DataTypeImm"):

    class _DataTypeImmType(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, tvm.ir.GenericConst) and isinstance(obj.value, tvm.DataType)

    class DataTypeImm(metaclass=_DataTypeImmType):
        """A dtype literal, as TVM 0.27 spells it."""

        def __new__(cls, dtype):
            return tvm.ir.GenericConst(tvm.DataType(str(dtype)), tvm.relax.AnyType())

    tvm.relax.DataTypeImm = DataTypeImm
if not hasattr(tvm.ir.Var, "name_hint"):
    tvm.ir.Var.name_hint = property(lambda self: self.name)
for _name in ("SBlock", "SBlockRealize"):
    if not hasattr(tvm.tirx, _name):
        setattr(tvm.tirx, _name, getattr(tvm.s_tir, _name))


def _source() -> str:
    named = os.environ.get("MLC_LLM_SOURCE")
    if not named:
        raise ImportError("MLC_LLM_SOURCE is not set: name a checkout of mlc-llm (its root or python/mlc_llm)")
    root = Path(named)
    package = root if (root / "libinfo.py").is_file() else root / "python" / "mlc_llm"
    if not (package / "libinfo.py").is_file():
        raise ImportError(f"MLC_LLM_SOURCE={named} holds no mlc_llm package (looked for {package}/libinfo.py)")
    return str(package)


__path__.append(_source())

from .libinfo import __version__  # noqa: E402, F401
