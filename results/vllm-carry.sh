#!/usr/bin/env bash
# Getting vLLM onto the lent GPU machine (no internet there; 64 MiB travel per call), as done for
# results/h200x2/. Run here, in the repository root:
#
#   bash results/vllm-carry.sh            # .carry/vllm-1 .. vllm-N: one xz tarball in pieces as large as a
#                                         # call takes beside the tracked tree and .whl (results/carry-split.sh;
#                                         # PIECE=14M ... for a fixed size): 7 of 33 MiB with the 26.6 MB tree of
#                                         # 2026-12-05, after the serving results' raw files went into raw.tar.xz
#                                         # (it had grown to 42 MB: 15 pieces of 14 MiB)
#
# The tarball is a site-packages folder: vLLM 0.24.0 (the release that pins torch 2.11, the
# device's torch) and results/vllm-device-deps.txt, unpacked for CPython 3.12. Dropped from the
# vLLM wheel, to fit in fewer calls, are files Hopper cells never load: FlashAttention 2's kernels
# (vLLM takes FlashAttention 3 on sm_90 and would fail loudly without it), the Rust frontend
# binary, Blackwell-only attention sources and DeepGEMM builds for other Pythons. 279 MB wheel +
# 88 MB of dependencies -> about 208 MB of xz.
#
# On the device, carry one piece per back-to-back call (the machine stays warm between them):
#   mkdir -p /tmp/vparts && cp .carry/vllm-N/* /tmp/vparts/
# and in the last one, before results/device-run.sh:
#   mkdir -p /tmp/site && cat /tmp/vparts/part-* | xz -dc | tar -x -C /tmp/site
#   export PYTHONPATH=/tmp/site
set -euo pipefail
version=${VLLM_VERSION:-0.24.0}
before=${DEPS_UPLOADED_BEFORE:-2026-07-01T00:00:00Z}
work=${WORK:-/tmp/vllm-carry}
platforms=()
for p in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
  manylinux1 manylinux_2_5; do platforms+=(--platform "${p}_x86_64"); done
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")

mkdir -p "$work"
[ -x "$work/pip/bin/pip" ] || { python3 -m venv "$work/pip" && "$work/pip/bin/pip" install -q -U pip; }
pip=("$work/pip/bin/pip")  # a pip that knows --uploaded-prior-to
rm -rf "$work/wheels" "$work/site"
"${pip[@]}" download -q --no-deps "${target[@]}" -d "$work/wheels" "vllm==$version"
"${pip[@]}" download -q --no-deps "${target[@]}" --uploaded-prior-to "$before" -d "$work/wheels" \
  -r results/vllm-device-deps.txt
"${pip[@]}" install -q --no-index --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
(cd "$work/site/vllm" && rm -rf vllm_flash_attn/_vllm_fa2_C.abi3.so vllm-rs third_party/fmha_sm100 \
  third_party/deep_gemm/_C.cpython-3{10,11,13,14}-x86_64-linux-gnu.so)
rm -rf "$work/site/bin"
tar -C "$work/site" -cf - . | xz -T0 -6 > "$work/vllm-site.tar.xz"
bash results/carry-split.sh vllm "$work/vllm-site.tar.xz"
