#!/usr/bin/env bash
# Getting AIPerf (the serving cells' load generator, runner/serving/loadgen.py) onto the lent GPU
# machine (no internet there; 64 MiB travel per call). Run here, in the repository root:
#
#   bash results/aiperf-carry.sh          # .carry/aiperf-1 .. aiperf-N: one xz tarball (56 MB) in pieces as
#                                         # large as a call takes beside the tracked tree and .whl
#                                         # (results/carry-split.sh; PIECE=20M ... for a fixed size): two of
#                                         # 33 MiB with the tree of 2026-12-05
#
# The tarball is a site-packages folder of aiperf 0.13.0 and its dependencies for CPython 3.12, less
# the large ones the device's image already has in versions aiperf accepts (numpy, scipy, pyarrow,
# matplotlib and its helpers, transformers, tokenizers, huggingface_hub; their ranges in aiperf's
# metadata are open: >=). The load generator runs with this site ahead of the device's own packages,
# in its own process only (a wrapper), as .venv/aiperf keeps it apart here.
#
# On the device, carry one piece per back-to-back call (the machine stays warm between them):
#   mkdir -p /tmp/aparts && cp .carry/aiperf-N/* /tmp/aparts/
# results/device-run.sh then unpacks it into /tmp/aiperf-site once, writes /tmp/aiperf (the wrapper)
# and passes it to the runner as --loadgen.
set -euo pipefail
version=${AIPERF_VERSION:-0.13.0}
work=${WORK:-/tmp/aiperf-carry}
on_device='^(numpy|scipy|pyarrow|matplotlib|contourpy|cycler|fonttools|kiwisolver|pyparsing|transformers|tokenizers|huggingface_hub|hf_xet|safetensors|regex|tqdm|fsspec|filelock|pyyaml|packaging|six|python_dateutil|typing_extensions)-'
platforms=()
for p in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
  manylinux1 manylinux_2_5; do platforms+=(--platform "${p}_x86_64"); done
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")

mkdir -p "$work"
rm -rf "$work/wheels" "$work/site"
python3 -m pip download -q "${target[@]}" -d "$work/wheels" "aiperf==$version"
find "$work/wheels" -name '*.whl' | while read -r wheel; do
  if basename "$wheel" | grep -qiE "$on_device"; then rm "$wheel"; fi
done
python3 -m pip install -q --no-index --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
rm -rf "$work/site/bin"
tar -C "$work/site" -cf - . | xz -T0 -6 > "$work/aiperf-site.tar.xz"
bash results/carry-split.sh aiperf "$work/aiperf-site.tar.xz"
