#!/usr/bin/env bash
# Getting the MLC route without MLC's wheels onto the lent GPU machine (no internet there; 64 MiB travel
# per call): apache-tvm from PyPI and mlc-llm's Python source at the pinned commit. Run here, in the
# repository root:
#
#   MLC_LLM_REPO=/path/to/mlc-llm bash results/mlc-carry.sh
#
# - .whl: what the machine lacks besides TVM itself (apache-tvm-ffi, pydantic and its parts, shortuuid),
#   for its CPython 3.12; results/device-run.sh installs .whl into /tmp/site.
# - .carry/mlc-tvm-1..3: apache-tvm 0.27.0.post1's wheel (about 100 MB) in three pieces, one per
#   back-to-back call carrying nothing else: `mkdir -p /tmp/tvmparts && cp .carry/mlc-tvm-N/* /tmp/tvmparts/`;
#   results/device-run.sh joins and installs it.
# - .carry/mlc-llm/mlc-llm-python.tar.gz: mlc-llm's python/ at the Makefile's MLC_LLM_COMMIT (a few MB),
#   unpacked by results/device-run.sh into /tmp/mlc-llm, which it names in MLC_LLM_SOURCE.
set -euo pipefail
repo=${MLC_LLM_REPO:?name a clone of mlc-llm (a bare mirror will do)}
commit=$(sed -n 's/^MLC_LLM_COMMIT ?= //p' Makefile)
work=${WORK:-/tmp/mlc-carry}
mkdir -p "$work" .whl .carry/mlc-llm
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
download .whl apache-tvm-ffi==0.1.14.post1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 \
  typing-inspection==0.4.5 shortuuid==1.0.13
download "$work" apache-tvm==0.27.0.post1
rm -rf .carry/mlc-tvm-[0-9]* "$work"/part-*
split -b 40M -d -a 1 "$work"/apache_tvm-0.27.0.post1-*.whl "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".carry/mlc-tvm-$n"; mv "$part" ".carry/mlc-tvm-$n/"
done
basename "$work"/apache_tvm-0.27.0.post1-*.whl > .carry/mlc-tvm-1/WHEEL_NAME
git --git-dir="$repo" archive "$commit" python | gzip -9 > .carry/mlc-llm/mlc-llm-python.tar.gz
echo "$commit" > .carry/mlc-llm/COMMIT
du -sh .carry/mlc-tvm-* .carry/mlc-llm .whl
