#!/usr/bin/env bash
# FlashAttention-4 for the Transformers flash_attention_4 row on the lent GPU machine (no internet there;
# 64 MiB travel per call): flash-attn-4 and NVIDIA's CuTe DSL (nvidia-cutlass-dsl with its CUDA 13
# libraries) from PyPI, for its CPython 3.12. Run here, in the repository root:
#
#   bash results/fa4-carry.sh
#
# - .whl: the small wheels (flash-attn-4, quack-kernels, nvidia-cutlass-dsl and its -libs-base / -libs-core,
#   torch-c-dlpack-ext, apache-tvm-ffi); results/device-run.sh installs .whl into /tmp/site.
# - .carry/fa4-1, .carry/fa4-2: nvidia-cutlass-dsl-libs-cu13's wheel (about 92 MB) in two pieces, one per
#   back-to-back call carrying nothing else: `mkdir -p /tmp/wheelparts/fa4 && cp .carry/fa4-N/* /tmp/wheelparts/fa4/`;
#   results/device-run.sh joins and installs it.
set -euo pipefail
work=${WORK:-/tmp/fa4-carry}
mkdir -p "$work" .whl
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"
}
# the versions images/transformers/image.yaml pins
download .whl flash-attn-4==4.0.0b36 quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 \
  nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 torch-c-dlpack-ext==0.1.5 \
  apache-tvm-ffi==0.1.14.post1
download "$work" nvidia-cutlass-dsl-libs-cu13==4.8.1
rm -rf .carry/fa4-[0-9]* "$work"/part-*
split -n 2 -d -a 1 "$work"/nvidia_cutlass_dsl_libs_cu13-4.8.1-*.whl "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".carry/fa4-$n"; mv "$part" ".carry/fa4-$n/"
done
basename "$work"/nvidia_cutlass_dsl_libs_cu13-4.8.1-*.whl > .carry/fa4-1/WHEEL_NAME
du -sh .carry/fa4-* .whl
