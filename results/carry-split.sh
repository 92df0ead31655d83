#!/usr/bin/env bash
# Cut a tarball into .carry/NAME-1 .. NAME-N for the lent GPU machine, each piece as large as one call
# can take beside what every call carries: 64 MiB a call, less the tracked working tree, less .whl
# (carried with any piece), less 4 MiB kept free for the tree to grow. Run here, in the repository root:
#
#   bash results/carry-split.sh NAME TARBALL          # PIECE=20M ... for a fixed size
#   bash results/carry-split.sh vllm <(ls .carry/vllm-*/part-* | sort -t/ -k3 | xargs cat)   # re-cut
#
# Pieces are named part-00, part-01, ... across the folders, so on the device, once every piece of a
# name is in one folder, `cat part-* | xz -dc | tar -x` joins them in order.
set -euo pipefail
name=$1
tarball=$2
limit=$((64 * 1024 * 1024))
spare=$((4 * 1024 * 1024))
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s + 0}')
whl=0
[ -d .whl ] && whl=$(du -sb .whl | cut -f1)
piece=${PIECE:-$(((limit - tree - whl - spare) / 1024 / 1024))M}
work=$(mktemp -d)
split -b "$piece" -d -a 2 "$tarball" "$work/part-"
rm -rf ".carry/$name"-[0-9]*
n=0
for part in "$work"/part-*; do
  n=$((n + 1))
  mkdir -p ".carry/$name-$n"
  mv "$part" ".carry/$name-$n/"
done
rmdir "$work"
echo "$name: $n pieces of at most $piece (tracked tree $((tree / 1024 / 1024)) MiB, .whl $((whl / 1024 / 1024)) MiB):" \
  ".carry/$name-1 .. .carry/$name-$n"
