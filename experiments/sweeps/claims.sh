#!/usr/bin/env bash
# Runs the Fashion-MNIST claim sweeps one after another, at the lowest CPU priority, resumably:
# rerunning skips finished runs and resumes a half-finished one from its checkpoint. Sweeps go
# under $SWEEPS (default /work/sweeps); give the names to run only some, in that order.
# A session's machine does not outlive it: each finished run's records are archived to
# experiments/results/<sweep>/runs/ (commit them), and a sweep copies those in instead of
# training them again. Mid-sweep, archive by hand:
#   .venv/bin/python -m experiments.sweep --sweep experiments/sweeps/towers.py \
#     --workdir /work/sweeps/towers --archive experiments/results/towers/runs
#
#   nohup bash experiments/sweeps/claims.sh > /work/sweeps/claims.log 2>&1 &
#   bash experiments/sweeps/claims.sh pooling towers
#
# On a 2-core host two chains, each pinned to a core, get 1.35x the images through
# (experiments/benchmarks/pinned_runs.py); keep augmentation after dropout (it copies from it):
#   taskset -c 0 bash experiments/sweeps/claims.sh towers &
#   taskset -c 1 bash experiments/sweeps/claims.sh relu_vs_tanh dropout augmentation &
# Two chains may also share one sweep: a run the other chain holds (its lock) is left to it.
set -uo pipefail
cd "$(dirname "$0")/../.."
SWEEPS=${SWEEPS:-/work/sweeps}
PYTHON=${PYTHON:-.venv/bin/python}
ARCHIVE=${ARCHIVE:-experiments/results}
ORDER=(relu_vs_tanh_lr quickstart_lr pooling lrn_vs_none_vs_bn towers relu_vs_tanh dropout
  augmentation)
mkdir -p "$SWEEPS"
[ $# -gt 0 ] || set -- "${ORDER[@]}"
for name in "$@"; do
  echo "== $(date -u +%FT%TZ) $name"
  reuse=()  # a sweep whose arm another sweep trains copies it from there (same config)
  [ "$name" = augmentation ] && [ -d "$SWEEPS/dropout" ] && reuse=(--reuse "$SWEEPS/dropout")
  # Runs finished on an earlier machine, kept in the repository under $ARCHIVE.
  [ -d "$ARCHIVE/$name/runs" ] && reuse+=(--reuse "$ARCHIVE/$name/runs")
  nice -n 19 "$PYTHON" -m experiments.sweep --sweep "experiments/sweeps/$name.py" \
    --workdir "$SWEEPS/$name" ${reuse[@]+"${reuse[@]}"}
  status=$?
  "$PYTHON" -m experiments.sweep --sweep "experiments/sweeps/$name.py" --workdir "$SWEEPS/$name" \
    --archive "$ARCHIVE/$name/runs" || true
  case $status in
    0) ;;
    3 | 130 | 143) echo "== $name: stopped by a signal (exit $status); the chain stops"; break ;;
    *) echo "== $name: the sweep stopped (exit $status); going on" ;;
  esac
  "$PYTHON" -m experiments.report "$SWEEPS/$name" > /dev/null || true
done
