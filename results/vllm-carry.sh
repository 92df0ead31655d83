#!/usr/bin/env bash
# Getting vLLM onto the lent GPU machine (no internet there; 64 MiB travel per call), as done for
# results/h200x2/. Run here, in the repository root:
#
#   bash results/vllm-carry.sh            # .carry/vllm-1 .. vllm-15: one xz tarball in 14 MiB pieces
#                                         # (PIECE=...: a call carries the tracked working tree too: 21 MB
#                                         # early in December 2026, 27 MB on 2026-12-05, when 42 MiB no longer
#                                         # fit, 37 MB that evening, when 28 MiB no longer fit: 42 MB
#                                         # after results/h100/serving-long; .whl goes with any piece)
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
rm -rf .carry/vllm-[0-9]*
split -b "${PIECE:-14M}" -d -a 2 "$work/vllm-site.tar.xz" "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".carry/vllm-$n"; mv "$part" ".carry/vllm-$n/"
done
du -sh .carry/vllm-*
