#!/usr/bin/env bash
# Getting vLLM's AWQ quantiser (llm-compressor) onto the lent GPU machine, as done for
# results/h200/vllm/. Run here, in the repository root, after results/vllm-carry.sh:
#
#   bash results/awq-quantiser-carry.sh      # .carry/awq-quantiser/awq-quantiser-site.tar.xz
#
# A site-packages folder for CPython 3.12 with llm-compressor 0.14.0.1 (the images' pin) and what
# neither the machine's image nor the vLLM carry has: compressed-tensors 0.19.0 (shadowing the
# vLLM carry's 0.17.0 in the quantiser's process only), datasets, multiprocess and auto-round.
# The machine's own torch 2.11, transformers 5.17.0, accelerate, pandas and pyarrow are used.
# results/device-run.sh unpacks it into /tmp/qsite and points VLLM_AWQ_QUANTISER at a python3
# with PYTHONPATH=/tmp/qsite:/tmp/site, as /opt/awq-quantiser is in the vllm image.
set -euo pipefail
work=${WORK:-/tmp/awq-quantiser-carry}
platforms=()
for p in manylinux_2_28 manylinux_2_17 manylinux2014; do platforms+=(--platform "${p}_x86_64"); done
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")
rm -rf "$work" && mkdir -p "$work"
python3 -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" llmcompressor==0.14.0.1 \
  compressed-tensors==0.19.0 datasets==5.2.0 multiprocess==0.70.19 auto-round==0.15.1
python3 -m pip install -q --no-index --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
rm -rf "$work/site/bin"
mkdir -p .carry/awq-quantiser
tar -C "$work/site" -cf - . | xz -T0 -6 > .carry/awq-quantiser/awq-quantiser-site.tar.xz
du -sh .carry/awq-quantiser
