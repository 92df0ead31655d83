#!/usr/bin/env bash
# Why the gpt-fast int8 row ran 1.20x faster than gpt-fast's own generate.py on the same
# checkpoint (results/h200/gptfast, results/README.md): one device call of about 6 minutes,
# carrying .whl (tiktoken) and gpt-fast's source at 32971d3 as gpt-fast-src/ (`git archive`).
# The int8 cell first (it makes the checkpoint, fills the inductor cache and runs generate.py
# after itself), then generate.py again exactly as the cell ran it: once more on the warm
# inductor cache with torch's profiler on its last sample (--profile: a chrome trace), and once
# on an empty inductor cache (its own compile and tuning). Traces and outputs go into the run
# folder, packed into $OUT.
#
#   GPT_FAST_HOME=$PWD/gpt-fast-src bash results/gptfast-int8-probe.sh RUN_FOLDER
set -uo pipefail
run_folder=$1
export GPT_FAST_HOME=${GPT_FAST_HOME:-$PWD/gpt-fast-src}
bash results/device-run.sh "$run_folder" 330 matrix.yaml --only gptfast-57623717d5ac | tail -4
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$run_folder/probe"
command=$(python3 -c "import json, shlex, sys; print(shlex.join(json.load(open(sys.argv[1]))['reference']['command']))" \
  "$run_folder/cells/gptfast-57623717d5ac.json")
echo "--- generate.py, warm inductor cache, profiled: $command"
eval "timeout 150 $command --profile $run_folder/probe/warm" 2>&1 | grep -E "tokens/sec|Compilation|Bandwidth" \
  | tee "$run_folder/probe/warm.txt"
echo "--- generate.py, empty inductor cache"
(export TORCHINDUCTOR_CACHE_DIR; TORCHINDUCTOR_CACHE_DIR=$(mktemp -d); eval "timeout 200 $command") 2>&1 | grep -E "tokens/sec|Compilation|Bandwidth" \
  | tee "$run_folder/probe/cold.txt"
gzip -f "$run_folder"/probe/*.json 2>/dev/null
if [ -n "${OUT:-}" ]; then
  tar -C "$(dirname "$run_folder")" -czf "$OUT/$(basename "$run_folder").tgz" "$(basename "$run_folder")"
fi
