#!/usr/bin/env bash
# Work longer than one device call (an EXL2 measurement pass, several compiled rows): start
# results/device-run.sh as a background process that outlives the call (its own session), then
# follow it over back-to-back calls, each returning before the call's limit. The machine stays
# lent while calls follow each other within its warm time (30 s), and /tmp with it.
#
#   bash results/device-background.sh start RUN_FOLDER BUDGET_S FOLLOW_S [runner args...]
#   bash results/device-background.sh follow FOLLOW_S     # next call: wait up to FOLLOW_S more
#
# Both print the run's new output. Every call also returns what is finished so far, so that a
# session whose device time ends mid-run loses nothing measured: the run folder as it stands
# (cell JSON, specs, logs: RUN-partial.tgz) and the files matched by BACKGROUND_EARLY (small
# artefacts such as an EXL2 measurement, once written, or the converter's resumable job folder),
# packed with their paths in early.tgz.part-*: unpacked in the checkout here and carried (carry
# .cache/store/derived/exl2), a stopped pass resumes on the next machine. When the run has ended, the packed run
# folder (device-run.sh packs it into $OUT) and anything listed in BACKGROUND_KEEP (paths, e.g.
# the store's torch-extensions) come back, larger files in 15 MiB pieces (cat them together here; xz).
# The background process runs a copy of device-run.sh: each call re-sends the working tree.
set -uo pipefail
state=/tmp/device-background
mkdir -p "$state"

snapshot() {  # what is finished so far, into $OUT
  [ -n "${OUT:-}" ] || return 0
  local run_folder
  run_folder=$(cat "$state/run_folder" 2>/dev/null) || return 0
  [ -d "$run_folder" ] && tar -C "$(dirname "$run_folder")" -czf "$OUT/$(basename "$run_folder")-partial.tgz" \
    --exclude='*.tgz' "$(basename "$run_folder")"
  early
}

early() {  # the BACKGROUND_EARLY files that exist, with their paths
  local found=()
  for path in ${BACKGROUND_EARLY:-}; do
    [ -f "$path" ] && found+=("$path")
  done
  # in 30 MiB pieces (cat early.tgz.part-* | tar -xz): a converter's saved state can outgrow one file
  [ ${#found[@]} -eq 0 ] || tar -czf - "${found[@]}" | split -b 30M -d - "$OUT/early.tgz.part-"
}

follow() {
  local deadline=$((SECONDS + $1)) shown
  shown=$(cat "$state/shown" 2>/dev/null || echo 0)
  while :; do
    local lines
    lines=$(wc -l < "$state/log")
    if [ "$lines" -gt "$shown" ]; then sed -n "$((shown + 1)),${lines}p" "$state/log"; shown=$lines; fi
    echo "$shown" > "$state/shown"
    if [ -f "$state/done" ]; then break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      snapshot
      echo "[device-background] still running after this call; follow again within 30 s"
      return 0
    fi
    sleep 5
  done
  echo "[device-background] finished: $(cat "$state/done")"
  if [ -n "${OUT:-}" ]; then
    cp "$state"/out/* "$OUT"/ 2>/dev/null
    early
    for path in ${BACKGROUND_KEEP:-}; do
      [ -e "$path" ] || continue
      tar -cf - "$path" | xz -T0 -6 | split -b 15M -d - "$OUT/$(basename "$path").txz.part-"
    done
  fi
}

case "${1:-}" in
  start)
    run_folder=$2; budget=$3; follow_s=$4; shift 4
    rm -rf "$state" && mkdir -p "$state/out"
    echo "$run_folder" > "$state/run_folder"
    cp results/device-run.sh "$state/device-run.sh"
    # its own session, so the call's end does not stop it; OUT for the run is the state folder
    OUT="$state/out" setsid nohup bash -c 'bash '"$state"'/device-run.sh "$@"; echo "exit $?" > '"$state/done" \
      _ "$run_folder" "$budget" "$@" > "$state/log" 2>&1 < /dev/null &
    follow "$follow_s" ;;
  follow)
    [ -f "$state/log" ] || { echo "[device-background] nothing started on this machine (was it given back?)"; exit 1; }
    follow "$2" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
