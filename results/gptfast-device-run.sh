#!/usr/bin/env bash
# How results/h200/gptfast/ was made on the lent H200 (no internet, no Docker there): one call.
# gpt-fast's source (the pinned commit, fetched here and carried beside this tree as gpt-fast-src/)
# is GPT_FAST_HOME, as the image's clone is. The gpt-fast cells run first within BUDGET_S, then the
# FP32 Transformers baseline in what is left, into one run folder packed into $OUT.
#
#   bash results/gptfast-device-run.sh RUN_FOLDER BUDGET_S
set -uo pipefail
run_folder=$1; budget=$2
export GPT_FAST_HOME=$PWD/gpt-fast-src
# a model store left by an earlier call on this machine (the repository root's), when its disk has room
if [ -d ../../.cache/store/synthetic ] && [ "$(df --output=avail -BG ../.. | tail -1 | tr -dc 0-9)" -gt 40 ]; then
  ln -sfn ../../.cache .cache
fi
df -h . | tail -1
python3 -c "import torch, tiktoken, sentencepiece, safetensors; print('torch', torch.__version__, torch.cuda.get_device_name())"
bash results/device-run.sh "$run_folder" $((budget - 50)) matrix.yaml --only gptfast-
left=$((budget - SECONDS - 5))
echo "baseline budget: $left s"
if [ "$left" -gt 45 ]; then
  bash results/device-run.sh "$run_folder" "$left" matrix.yaml --only transformers-00eee0f9ada1
fi
