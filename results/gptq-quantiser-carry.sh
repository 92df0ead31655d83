#!/usr/bin/env bash
# Getting ExLlamaV2's GPTQ quantiser (GPTQModel 7.0.0) onto the lent GPU machine, for GPTQ cells of a
# real (unquantised) checkpoint. Run here, in the repository root:
#
#   bash results/gptq-quantiser-carry.sh     # .carry/gptq-quantiser-1..N: one xz tarball in 55 MiB pieces
#
# A site-packages folder for CPython 3.12 with what the exllamav2 image's /opt/gptq-quantiser has
# (images/exllamav2/image.yaml: side_venv) and the machine lacks: results/gptq-quantiser-device-deps.txt,
# resolved here against torch 2.11 (pip freeze of `make setup-gptq-quantiser`'s venv, without torch,
# its CUDA libraries and its own dependencies, and without pandas and pyarrow, which the machine has).
# GPTQModel and five of its dependencies are source distributions only: built into wheels here
# (pypcre, the one with C code, with CPython 3.12). On the device, carry one piece per back-to-back call:
#   mkdir -p /tmp/gqparts && cp .carry/gptq-quantiser-N/* /tmp/gqparts/
# results/device-run.sh unpacks them into /tmp/gsite and points EXLLAMAV2_GPTQ_QUANTISER at a python3
# with PYTHONPATH=/tmp/gsite:/tmp/site, as /opt/gptq-quantiser is layered over the image's venv.
set -euo pipefail
work=${WORK:-/tmp/gptq-quantiser-carry}
python312=${PYTHON312:-python3.12}
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
  manylinux_2_5 manylinux1 linux; do platforms+=(--platform "${p}_x86_64"); done
target=(--python-version 3.12 --implementation cp --only-binary=:all: "${platforms[@]}")
rm -rf "$work" && mkdir -p "$work/wheels"
python3 -m pip wheel -q --no-deps -w "$work/wheels" gptqmodel==7.0.0 defuser==0.0.28 device-smi==0.5.7 \
  logbar==0.4.15 tokenicer==0.0.14
"$python312" -m pip wheel -q --no-deps -w "$work/wheels" pypcre==0.6.4
python3 -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" -r results/gptq-quantiser-device-deps.txt
python3 -m pip install -q --no-index --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
rm -rf "$work/site/bin"
tar -C "$work/site" -cf - . | xz -T0 -6 > "$work/gptq-quantiser-site.tar.xz"
rm -rf .carry/gptq-quantiser-[0-9]*
split -b 55M -d -a 1 "$work/gptq-quantiser-site.tar.xz" "$work/part-"
n=0
for part in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".carry/gptq-quantiser-$n"; mv "$part" ".carry/gptq-quantiser-$n/"
done
du -sh .carry/gptq-quantiser-*
