#!/usr/bin/env bash
# How the committed GPU results were made on the lent GPU machine (no internet, no Docker there):
# install any carried wheels, run the runner with the local executor on a run folder that
# survives between back-to-back calls, then pack that folder into $OUT.
#
#   bash results/device-run.sh RUN_FOLDER TIME_BUDGET_S [runner args...]
set -uo pipefail
run_folder=$1; budget=$2; shift 2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# llama.cpp built on an earlier call and carried back (results/llamacpp-carry.sh): the binding,
# its libraries, llama-quantize, llama-bench and the converter, one build.
if [ -f .carry/llamacpp-cuda/lcpp.tar.xz ]; then
  tar -xJf .carry/llamacpp-cuda/lcpp.tar.xz -C /tmp \
    && cp -r .carry/llamacpp-cuda/convert_hf_to_gguf.py .carry/llamacpp-cuda/conversion .carry/llamacpp-cuda/gguf-py /tmp/lcpp/ \
    && export LLAMA_CPP_HOME=/tmp/lcpp PYTHONPATH=$PWD/.carry/llamacpp-cuda/python${PYTHONPATH:+:$PYTHONPATH} \
    && cat /tmp/lcpp/BUILD_INFO
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv
timeout --signal=INT --kill-after=20 "$budget" python3 -m runner "$@" -o "$run_folder" --store .cache/store
echo "runner exit: $?"
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$run_folder")" -czf "$OUT/run.tgz" "$(basename "$run_folder")"
fi
