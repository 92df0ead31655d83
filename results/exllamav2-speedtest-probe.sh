#!/usr/bin/env bash
# Why ExLlamaV2's own speed test (test_inference.py -s) ran 8.5x slower than the GPTQ cell on an H200
# (results/README.md, results/h200/exllamav2): one device call. The GPTQ cell first (it builds the
# JIT extension into the store and the synthetic GPTQ checkpoint), then test_inference.py -s on that
# checkpoint as the cell runs it, with ExLlamaV2's CUDA graphs off (-ng), and under cProfile.
#
#   bash results/exllamav2-speedtest-probe.sh RUN_FOLDER   (carrying .whl and .carry/exllamav2-tools)
set -uo pipefail
run_folder=$1
export EXLLAMAV2_TEST_INFERENCE=$PWD/.carry/exllamav2-tools/test_inference.py
bash results/device-run.sh "$run_folder" 330 matrix.yaml --only exllamav2-579d6ca67dab | tail -4
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} TORCH_EXTENSIONS_DIR=$PWD/.cache/store/torch-extensions
# the cell's own choice (9.0a on an H200, recorded in its engine_env): another value is another JIT build
export TORCH_CUDA_ARCH_LIST=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['environment']['engine_env']['TORCH_CUDA_ARCH_LIST'])" "$run_folder"/cells/exllamav2-579d6ca67dab.json)
model=$(ls -d .cache/store/derived/gptq/*/ | head -1)
mkdir -p "$run_folder/probe"
probe() {  # name, then test_inference.py's extra arguments
  local name=$1; shift
  echo "--- $name: $*"
  timeout 100 python3 "$@" 2>&1 | grep -v "^ -- Loading\|it/s" | tail -25 | tee "$run_folder/probe/$name.txt"
}
probe default "$EXLLAMAV2_TEST_INFERENCE" -m "$model" -s -l 256
probe no-graphs "$EXLLAMAV2_TEST_INFERENCE" -m "$model" -s -l 256 -ng
echo "--- cprofile"
timeout 120 python3 -m cProfile -s tottime "$EXLLAMAV2_TEST_INFERENCE" -m "$model" -s -l 256 2>&1 \
  | grep -A45 "Ordered by" > "$run_folder/probe/cprofile.txt"; head -40 "$run_folder/probe/cprofile.txt"
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$run_folder")" -czf "$OUT/$(basename "$run_folder").tgz" "$(basename "$run_folder")"
fi
