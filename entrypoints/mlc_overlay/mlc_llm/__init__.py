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
- tvm.tirx.PrimFunc.buffer_map and PrimFunc(buffer_map=...): a buffer parameter is now the buffer
  itself (a Var of BufferType) (compiler_pass/low_batch_specialization.py, lift_global_buffer_alloc.py;
  GPU targets only)
- tvm.tirx.stmt_functor.substitute / post_order_visit: now tvm_ffi.structural_map / structural_walk
  (compiler_pass/lift_global_buffer_alloc.py, pipeline_parallel_rewrite.py)

and two fixes to mlc-llm's own modules as they are imported (_SOURCE_FIXES; GPU targets only):

- compiler_pass/lift_global_buffer_alloc.py looks for the last pointer parameter; buffer
  parameters are now typed BufferType
- compiler_pass/attach_sampler.py: ``full`` takes its scalar after its output, but 0.27's
  nn.tensor_ir_op passes a scalar as an ordinary call_tir input, before the outputs, and as int64
- mlc_llm.tokenizers: the C++ tokenizer's info detection in Python (tokenizers/__init__.py)

With MLC's own wheels none of this is needed: the runner puts this folder on the path only
when ``import mlc_llm`` fails without it.
"""

import importlib.abc
import importlib.machinery
import linecache
import os
import sys
import types
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
if not hasattr(tvm.tirx.PrimFunc, "buffer_map"):
    tvm.tirx.PrimFunc.buffer_map = property(lambda self: {p: p for p in self.params if tvm.tirx.is_buffer_var(p)})
    _prim_func_init = tvm.tirx.PrimFunc.__init__

    def _prim_func_init_buffer_map(self, params, body, ret_type=None, buffer_map=None, attrs=None, span=None):
        params = [buffer_map.get(p, p) for p in params] if buffer_map else params
        _prim_func_init(self, params, body, ret_type=ret_type, attrs=attrs, span=span)

    tvm.tirx.PrimFunc.__init__ = _prim_func_init_buffer_map
if not hasattr(tvm.tirx, "stmt_functor"):
    import tvm_ffi

    tvm.tirx.stmt_functor = types.SimpleNamespace(
        substitute=lambda value, var_map: tvm_ffi.structural_map(
            value, (tvm.ir.Var, lambda var: var_map.get(var, var)), order="post"
        ),
        post_order_visit=lambda value, callback: tvm_ffi.structural_walk(value, callback, order="post"),
    )
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


# (old, new) per module, each a whole line or lines, the line count kept (tracebacks and TVMScript's
# parser, which reads a prim_func's source through linecache, see the fixed text at the file's lines)
_SOURCE_FIXES = {
    "mlc_llm.compiler_pass.lift_global_buffer_alloc": [
        (
            "while not isinstance(params[insertion_point - 1].ty, tvm.ir.PointerType):",
            "while not isinstance(params[insertion_point - 1].ty, (tvm.ir.PointerType, tirx.BufferType)):",
        ),
    ],
    "mlc_llm.compiler_pass.attach_sampler": [
        ("def full(var_result: T.handle, value: T.int32):", "def full(value: T.int64, var_result: T.handle):"),
        ("            result[vi, 0] = value\n", '            result[vi, 0] = T.Cast("int32", value)\n'),
    ],
}


class _FixingLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        source = self.get_source(fullname)
        for old, new in _SOURCE_FIXES[fullname]:
            if source.count(old) != 1:
                raise ImportError(f"mlc_overlay: {self.path} no longer holds {old!r} once; update _SOURCE_FIXES")
            source = source.replace(old, new)
        linecache.cache[self.path] = (len(source), None, source.splitlines(True), self.path)
        return compile(source, self.path, "exec", dont_inherit=True)


class _SourceFixes(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _SOURCE_FIXES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _FixingLoader(fullname, spec.origin)
        return spec


if not any(isinstance(finder, _SourceFixes) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SourceFixes())
__path__.append(_source())

from .libinfo import __version__  # noqa: E402, F401
