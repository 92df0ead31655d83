#!/usr/bin/env bash
# A synthetic checkpoint of the store seen as a user's own: its files linked into DEST, all but the
# synthetic marker, so the runner treats it as a real, unquantised checkpoint (an AWQ cell then has
# it quantised by llm-compressor instead of writing the synthetic AWQ layout). Used for
# results/h200/vllm-llm-compressor/: the quantiser's cost and output do not depend on weight values.
#
#   bash results/as-user-checkpoint.sh STORE NAME DEST     # e.g. .cache/store shisa-7b-v1 /tmp/shisa-7b-v1-user
set -euo pipefail
store=$1; name=$2; dest=$3
source=$(ls -d "$store/synthetic/$name"-* | head -1)
mkdir -p "$dest"
for f in "$source"/*; do
  [ "$(basename "$f")" = synthetic.json ] || ln -sf "$(realpath "$f")" "$dest/$(basename "$f")"
done
ls -l "$dest"
