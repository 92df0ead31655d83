#!/usr/bin/env bash
# Getting CTranslate2 onto the lent GPU machine (no internet there; 64 MiB travel per call). Run
# here, in the repository root:
#
#   bash results/ctranslate2-carry.sh     # .whl/ctranslate2-4.8.5 (cp312); .carry/ct2-cublas-1..N
#
# CTranslate2 4.8.5's wheel (about 40 MB, cp312 for the device's Python) goes to .whl, which
# results/device-run.sh installs. Its library dlopens CUDA 12's cuBLAS (libcublas.so.12, which
# loads libcublasLt.so.12); the GPU machines have CUDA 13's only. Those two files, from the
# registry's nvidia-cublas-cu12 12.4.5.8 (363 MB wheel, 551 MB unpacked), travel as one xz
# tarball (222 MB; 4 minutes of xz on 2 cores) in four 55 MiB pieces, one piece per back-to-back
# call carrying nothing else (a piece and .whl exceed the 64 MiB a call carries; the machine
# stays warm between calls), .whl in the call that runs the cells:
#   mkdir -p /tmp/ct2parts && cp .carry/ct2-cublas-N/* /tmp/ct2parts/
# results/device-run.sh unpacks them into /tmp/cublas12 and puts that on LD_LIBRARY_PATH.
set -euo pipefail
work=${WORK:-/tmp/ct2-carry}
mkdir -p "$work" .whl
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl ctranslate2==4.8.5
[ -f "$work/cublas.whl" ] || { pip download -q --no-deps nvidia-cublas-cu12==12.4.5.8 -d "$work" \
  && mv "$work"/nvidia_cublas_cu12-*.whl "$work/cublas.whl"; }
rm -rf "$work/lib" && mkdir -p "$work/lib"
unzip -q -j -o "$work/cublas.whl" nvidia/cublas/lib/libcublas.so.12 nvidia/cublas/lib/libcublasLt.so.12 -d "$work/lib"
tar -C "$work/lib" -cf - . | xz -T0 -6 > "$work/cublas12.tar.xz"
rm -rf .carry/ct2-cublas-[0-9]* "$work"/part-*
split -b 55M -d -a 1 "$work/cublas12.tar.xz" "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".carry/ct2-cublas-$n"; mv "$part" ".carry/ct2-cublas-$n/"
done
du -sh .carry/ct2-cublas-* .whl/ctranslate2-*
