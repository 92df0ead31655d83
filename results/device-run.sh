#!/usr/bin/env bash
# How the committed GPU results were made on the lent GPU machine (no internet, no Docker there):
# install any carried wheels, run the runner with the local executor on a run folder that
# survives between back-to-back calls, then pack that folder into $OUT.
#
#   bash results/device-run.sh RUN_FOLDER TIME_BUDGET_S [runner args...]
#   DEVICE_SCRIPT=results/loadgen-overhead/probe.py bash results/device-run.sh OUT_FOLDER TIME_BUDGET_S [its args...]
set -uo pipefail
run_folder=$1; budget=$2; shift 2
# The lent machine sets PYTHONDONTWRITEBYTECODE=1 and its torch venv ships no bytecode, so every Python
# process there compiled torch's (and vLLM's) sources again: ~9 s of each load generator's start (seen
# 2026-12-05 on an H100). Bytecode goes to /tmp instead, written once per machine.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# vLLM and its dependencies as one site-packages tarball, carried in pieces over back-to-back
# calls into /tmp/vparts (results/vllm-carry.sh): unpacked once per machine.
if ls /tmp/vparts/part-* >/dev/null 2>&1 && [ ! -f /tmp/site/vllm/__init__.py ]; then
  mkdir -p /tmp/site && cat /tmp/vparts/part-* | xz -dc -T0 | tar -x -C /tmp/site
fi
if [ -f /tmp/site/vllm/__init__.py ]; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  # vLLM's GPU sampler imports FlashInfer at load; should that import fail here, greedy cells
  # (which never use FlashInfer's top-p/top-k) go on without it, and each result records the switch
  # in environment.engine_env.
  if ! python3 -c "from vllm.v1.attention.backends.flashinfer import FlashInferBackend" 2>/tmp/fi.err; then
    tail -1 /tmp/fi.err; export VLLM_USE_FLASHINFER_SAMPLER=0
  fi
fi
# Compile caches of an earlier machine: what FlashInfer JIT-built (vLLM's sampler), vLLM's torch.compile cache and
# Triton's kernels, brought back by a last call on that machine
#   tar -cf - $(ls -d /root/.cache/flashinfer /root/.cache/vllm /root/.triton/cache 2>/dev/null) | xz -T0 -6 \
#     | split -b 15M -d - "$OUT/gpu-caches.txz.part-"
# and carried in .carry/gpu-caches: unpacked into place once per machine, so a vLLM server does not build them
# again on every fresh machine (its start took 187-267 s without them). Each cache keys what it holds by what
# built it (versions, GPU, model config); anything else is built anew.
if ls .carry/gpu-caches/*.txz.part-00 >/dev/null 2>&1 && [ ! -f /tmp/gpu-caches-unpacked ]; then
  for first in .carry/gpu-caches/*.txz.part-00; do
    cat "${first%00}"* | xz -dc | tar -x -C / && echo "unpacked $(basename "${first%.txz.part-00}") into place"
  done
  touch /tmp/gpu-caches-unpacked
fi
# vLLM's AWQ quantiser (results/awq-quantiser-carry.sh): llm-compressor's site, put ahead of vLLM's
# in the quantiser's process only, as /opt/awq-quantiser is in the vllm image.
if [ -f .carry/awq-quantiser/awq-quantiser-site.tar.xz ] && [ ! -d /tmp/qsite ]; then
  mkdir -p /tmp/qsite && tar -xJf .carry/awq-quantiser/awq-quantiser-site.tar.xz -C /tmp/qsite
fi
if [ -d /tmp/qsite ]; then
  printf '#!/bin/sh\nPYTHONPATH=/tmp/qsite:/tmp/site exec python3 "$@"\n' > /tmp/awq-python && chmod +x /tmp/awq-python
  export VLLM_AWQ_QUANTISER=/tmp/awq-python
fi
# ExLlamaV2's GPTQ quantiser (results/gptq-quantiser-carry.sh): GPTQModel's site, ahead of the machine's
# own packages in the quantiser's process only, as /opt/gptq-quantiser is in the exllamav2 image; its
# pieces carried into /tmp/gqparts over back-to-back calls, or all in this call under .carry/.
if [ ! -d /tmp/gsite ]; then
  parts=$(ls /tmp/gqparts/part-* 2>/dev/null || ls .carry/gptq-quantiser-*/part-* 2>/dev/null || true)
  if [ -n "$parts" ]; then mkdir -p /tmp/gsite && cat $parts | xz -dc -T0 | tar -x -C /tmp/gsite; fi
fi
if [ -d /tmp/gsite ]; then
  printf '#!/bin/sh\nPYTHONPATH=/tmp/gsite:/tmp/site exec python3 "$@"\n' > /tmp/gptq-python && chmod +x /tmp/gptq-python
  export EXLLAMAV2_GPTQ_QUANTISER=/tmp/gptq-python
fi
# llama.cpp built on an earlier call and carried back (results/llamacpp-carry.sh): the binding,
# its libraries, llama-quantize, llama-bench and the converter, one build.
if [ -f .carry/llamacpp-cuda/lcpp.tar.xz ]; then
  tar -xJf .carry/llamacpp-cuda/lcpp.tar.xz -C /tmp \
    && cp -r .carry/llamacpp-cuda/convert_hf_to_gguf.py .carry/llamacpp-cuda/conversion .carry/llamacpp-cuda/gguf-py /tmp/lcpp/ \
    && export LLAMA_CPP_HOME=/tmp/lcpp PYTHONPATH=$PWD/.carry/llamacpp-cuda/python${PYTHONPATH:+:$PYTHONPATH} \
    && cat /tmp/lcpp/BUILD_INFO
fi
# Or llama.cpp's trimmed source (results/llamacpp-carry.sh source, .carry/llama-src, unpacked into
# .carry/llama-cpp-python, which stays on the machine between calls as an ignored folder): built here for
# sm_90 once per machine (about 5 min on 16 cores), binding from the same sdist. The serving cells' llama-server
# comes from this build (the pieces of an older .carry/llamacpp-cuda have no server).
if [ -f .carry/llama-src/llama-cpp-python.tar.xz ] && [ ! -d .carry/llama-cpp-python ]; then
  tar -xJf .carry/llama-src/llama-cpp-python.tar.xz -C .carry
fi
if [ -z "${LLAMA_CPP_HOME:-}" ] && [ -f .carry/llama-cpp-python/vendor/llama.cpp/CMakeLists.txt ]; then
  if [ ! -x /tmp/lcpp/bin/llama-server ]; then
    echo "building llama.cpp for sm_90 from .carry/llama-cpp-python (log: /tmp/lcpp-build.log)"
    BUILD_DIR=/tmp/lcpp-build bash images/llamacpp/build-llama-cpp.sh .carry/llama-cpp-python /tmp/lcpp \
      -G Ninja -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 > /tmp/lcpp-build.log 2>&1 || tail -20 /tmp/lcpp-build.log
  fi
  [ -x /tmp/lcpp/bin/llama-server ] && export LLAMA_CPP_HOME=/tmp/lcpp \
    PYTHONPATH=$PWD/.carry/llama-cpp-python${PYTHONPATH:+:$PYTHONPATH} && cat /tmp/lcpp/BUILD_INFO
fi
# ExLlamaV2's CUDA extension, JIT-built on an earlier machine and brought back by
# results/device-background.sh (BACKGROUND_KEEP=.cache/store/torch-extensions), carried in
# .carry/exllamav2-ext: unpacked into the store once per machine. The wheel's sources were just
# installed, so they are newer than the carried objects. Ninja (torch's JIT builds with it) judges an
# output by the mtime its .ninja_log recorded, not the file's: touching the objects alone still rebuilt
# everything (2026-12-02, 122 s); so the objects are touched and the log's mtimes (field 3, ns) set to
# now. Only valid for the same exllamav2, torch, paths and flags as the build (ninja also compares
# each command's hash).
if ls .carry/exllamav2-ext/torch-extensions.txz.part-* >/dev/null 2>&1 && [ ! -d .cache/store/torch-extensions ]; then
  cat .carry/exllamav2-ext/torch-extensions.txz.part-* | xz -dc | tar -x && find .cache/store/torch-extensions -type f -exec touch {} + \
    && for log in .cache/store/torch-extensions/*/.ninja_log; do
      awk -v now="$(date +%s%N)" 'BEGIN { OFS = "\t" } /^#/ { print; next } { $3 = now; print }' "$log" > "$log.new" && mv "$log.new" "$log"
    done
fi
# CUDA 12's cuBLAS for CTranslate2's wheel (results/ctranslate2-carry.sh), carried in pieces into
# /tmp/ct2parts over back-to-back calls: unpacked once per machine, put on the library path.
if ls /tmp/ct2parts/part-* >/dev/null 2>&1 && [ ! -f /tmp/cublas12/libcublasLt.so.12 ]; then
  mkdir -p /tmp/cublas12 && cat /tmp/ct2parts/part-* | xz -dc -T0 | tar -x -C /tmp/cublas12
fi
if [ -f /tmp/cublas12/libcublasLt.so.12 ]; then
  export LD_LIBRARY_PATH=/tmp/cublas12${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# The MLC route without MLC's wheels (results/mlc-carry.sh): apache-tvm's wheel carried in pieces into
# /tmp/tvmparts over back-to-back calls, joined and installed once per machine; mlc-llm's Python source
# unpacked into /tmp/mlc-llm and named in MLC_LLM_SOURCE.
if ls /tmp/tvmparts/part-* >/dev/null 2>&1 && [ ! -f /tmp/site/tvm/__init__.py ]; then
  wheel=/tmp/$(cat /tmp/tvmparts/WHEEL_NAME) && cat /tmp/tvmparts/part-* > "$wheel" \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel"
fi
if [ -f .carry/mlc-llm/mlc-llm-python.tar.gz ] && [ ! -d /tmp/mlc-llm/python ]; then
  mkdir -p /tmp/mlc-llm && tar -xzf .carry/mlc-llm/mlc-llm-python.tar.gz -C /tmp/mlc-llm
fi
if [ -d /tmp/mlc-llm/python ]; then
  # mlc_llm's compile replaces TVM's CUDA compile callback with `nvcc --fatbin` (nvcc on PATH, gcc for it);
  # CUDA_PATH (headers; cccl under targets/x86_64-linux/include) matters only for NVRTC, i.e. loading a
  # library that holds CUDA source. TVM's CUDA runtime needs libcuda.so.1 and libcudart.so.13, and a failed
  # load of it reads as "no GPU": the line below says whether it loads.
  export MLC_LLM_SOURCE=/tmp/mlc-llm PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
  command -v nvcc >/dev/null || export PATH=$CUDA_PATH/bin:$PATH
  nvcc --version | tail -1
  # the cell's own import (run_mlc loads libcudart.so.13 from site-packages where the loader lacks it)
  (cd entrypoints && python3 -c "import run_mlc as m; d = m.tvm.cuda(0); print('tvm', m.tvm.__version__, 'cudart', m.PRELOADED_CUDA_RUNTIME or 'by name', 'cuda', d.exist, d.compute_version if d.exist else m.cuda_runtime_problem())") || true
fi
# Other wheels too large for one call (results/fa4-carry.sh): each in pieces under /tmp/wheelparts/<name>/ with
# its WHEEL_NAME, carried over back-to-back calls, joined once and unpacked into /tmp/site on every call.
# Unpacked, not pip-installed: pip --target skips a folder that exists already, and such a wheel can share one
# with a wheel from .whl (nvidia_cutlass_dsl/ of -libs-base and -libs-cu13), whose --upgrade above replaces
# that folder on every call.
for parts in /tmp/wheelparts/*/; do
  [ -f "$parts/WHEEL_NAME" ] || continue
  wheel=/tmp/$(cat "$parts/WHEEL_NAME")
  [ -f "$wheel" ] || cat "$parts"/part-* > "$wheel"
  python3 -m zipfile -e "$wheel" /tmp/site && echo "unpacked $(basename "$wheel")"
done
# .pth files of wheels in /tmp/site (nvidia-cutlass-dsl's puts its dsl_packages on sys.path) are read only in a
# site directory, which a PYTHONPATH entry is not: a sitecustomize there makes it one for every process.
if ls /tmp/site/*.pth >/dev/null 2>&1 && [ ! -f /tmp/site/sitecustomize.py ]; then
  printf 'import site\nsite.addsitedir("/tmp/site")\n' > /tmp/site/sitecustomize.py
fi
# AIPerf for serving cells (results/aiperf-carry.sh): its site carried in pieces into /tmp/aparts (or
# all under .carry/aiperf-*), unpacked once per machine, run through a wrapper with that site alone
# ahead of the device's packages, and named to the runner as --loadgen. Pieces still on their way (a
# background run started before the last carry call) are waited for, up to 4 min: a site is kept only
# when the pieces join into a whole tarball.
loadgen=()
for attempt in $(seq 24); do
  [ ! -d /tmp/aiperf-site ] || break
  parts=$(ls /tmp/aparts/part-* 2>/dev/null || ls .carry/aiperf-*/part-* 2>/dev/null || true)
  [ -n "$parts" ] || break
  rm -rf /tmp/aiperf-site.partial && mkdir -p /tmp/aiperf-site.partial
  if cat $parts | xz -dc -T0 2>/dev/null | tar -x -C /tmp/aiperf-site.partial 2>/dev/null; then
    mv /tmp/aiperf-site.partial /tmp/aiperf-site
  else
    echo "AIPerf's $(echo $parts | wc -w) piece(s) do not make a whole tarball yet: waiting for the rest ($attempt)"
    sleep 10
  fi
done
if [ -d /tmp/aiperf-site ]; then
  # AIPerf needs no torch (its image and .venv/aiperf have none), but the machine's transformers imports it
  # when it is there: ~18 s of each tokenizer load, twice per AIPerf run (its prefetch and its dataset
  # manager; 2026-12-05, H100). Hidden from AIPerf's processes, as in its own image.
  printf 'import sys\n\nsys.modules["torch"] = None  # AIPerf without torch, as in its image\n' \
    > /tmp/aiperf-site/sitecustomize.py
  printf '#!/bin/sh\nPYTHONPATH=/tmp/aiperf-site exec python3 -m aiperf "$@"\n' > /tmp/aiperf && chmod +x /tmp/aiperf
  loadgen=(--loadgen /tmp/aiperf)
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv
command=(python3 -m runner "$@" -o "$run_folder" --store .cache/store)
if [ -n "${DEVICE_SCRIPT:-}" ]; then  # another script than the runner, in this environment (loadgen-overhead/probe.py)
  command=(python3 "$DEVICE_SCRIPT" "$@" --out "$run_folder")
fi
timeout --signal=INT --kill-after=60 "$budget" "${command[@]}" "${loadgen[@]}"
echo "${DEVICE_SCRIPT:-runner} exit: $?"
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$run_folder")" -czf "$OUT/$(basename "$run_folder").tgz" "$(basename "$run_folder")"
fi
