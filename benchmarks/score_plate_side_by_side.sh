#!/bin/bash
# score_plate.py in this checkout and in a reference checkout, in turn, so both see the same machine
# (this machine's speed drifts by +-25 % within a minute: compare medians taken side by side only).
#
# Usage: benchmarks/score_plate_side_by_side.sh REFERENCE_CHECKOUT [ROUNDS] [PAIRS] [extra score_plate args]
#   git worktree add --detach /tmp/ref <commit>
#   TF_CPP_MIN_LOG_LEVEL=2 benchmarks/score_plate_side_by_side.sh /tmp/ref 8 2
# Both score with this checkout's demo bundle (data/models/demo/ensemble) unless --model is given.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
REF=$(cd "${1:?reference checkout}" && pwd)
ROUNDS=${2:-8}
PAIRS=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
PY=$(command -v "${PYTHON:-python}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute (each side runs in its own folder), links kept
MODEL=(--model "$HERE/data/models/demo/ensemble")
for arg in "$@"; do [ "$arg" = "--model" ] && MODEL=(); done
for _ in $(seq "$PAIRS"); do
  for side in new ref; do
    dir=$HERE; [ "$side" = ref ] && dir=$REF
    echo "== $side ($dir, $(git -C "$dir" rev-parse --short HEAD)) $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
    out=$(cd "$dir" && PYTHONPATH="$dir" "$PY" benchmarks/score_plate.py "${MODEL[@]}" --rounds "$ROUNDS" "$@" 2>&1) ||
      { echo "$out" | tail -20; echo "score_plate.py failed in $dir" >&2; exit 1; }
    echo "$out" | grep -E "^medians|^\(b\)|^\(c\)|cached re-score"
  done
done
