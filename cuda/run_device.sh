#!/usr/bin/env bash
# Runs on the GPU machine (the `run` tool's device), over binaries built here:
#   BUILD=build-cuda bash cuda/run_device.sh [steps...]
# steps (default all): tests memcheck racecheck validate validate_long replay compare bench
# Logs go to $OUT (or ./device-out): one file per step, and a summary at the end.
# The build must be static (-DKVSIM_STATIC_DEPS=ON): the device has no HDF5 and no Boost.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-cuda}
OUT=${OUT:-device-out}
mkdir -p "$OUT"
KVSIM=$BUILD/sim/kvsim
TESTS=$BUILD/tests/cuda/kvsim_tests_cuda
WORK=$(mktemp -d)
STEPS=${*:-tests memcheck racecheck validate validate_long replay compare bench}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
run_step() {  # name, command...
  local name=$1
  shift
  local t0=$(date +%s%N)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s%N)
  note "$(printf '%-14s rc=%-3d %8.1f s   %s' "$name" "$rc" "$(( (t1 - t0) / 1000000 ))e-3" "$*")"
  tail -n 4 "$OUT/$name.log" | sed 's/^/      | /' | tee -a "$SUMMARY"
  return $rc
}

note "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(nproc) cores"
DEFAULT=$WORK/default.h5
LONG=$WORK/long.h5
need_traces() {
  [ -f "$DEFAULT" ] || run_step gen_default "$KVSIM" trace gen --out "$DEFAULT"
}
SMALL=$WORK/small.h5
HH_SMALL="gq:hh=8,sinks=2,kblock=16,kgroup=16,vwindow=8"
need_small() {
  [ -f "$SMALL" ] || run_step gen_small "$KVSIM" trace gen --out "$SMALL" --layers 1 --prefill 40 --decode 200 --head-dim 64
}

for s in $STEPS; do
  case $s in
    tests) run_step tests "$TESTS" --durations yes ;;
    memcheck)  # the test cases with few launches; the step-sequential heavy hitters through a small validate
      run_step memcheck timeout 280 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 "$TESTS" \
        "[entry],[hadamard],[replay],[mixed],[vq],[kvarn]"
      need_small
      run_step memcheck_hh timeout 200 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
        "$KVSIM" validate --trace "$SMALL" -m "$HH_SMALL" --every 3 ;;
    racecheck)
      run_step racecheck timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 "$TESTS" \
        "[kivi],[entry],[hadamard],[kvarn]"
      # the replay test runs the heavy hitters' step-sequential pass: many small launches, slow under racecheck
      run_step racecheck_replay timeout 500 compute-sanitizer --tool racecheck --error-exitcode 9 "$TESTS" "[replay]"
      need_small
      run_step racecheck_hh timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$KVSIM" validate --trace "$SMALL" -m "$HH_SMALL" --every 3 ;;
    validate)
      need_traces
      run_step validate "$KVSIM" validate --trace "$DEFAULT" --all-methods --every ${VALIDATE_EVERY:-7} ;;
    validate_long)
      run_step gen_long "$KVSIM" trace gen --out "$LONG" --layers 1 --q-heads 16 --kv-heads 4 --prefill 1024 --decode 15616
      run_step validate_long "$KVSIM" validate --trace "$LONG" --all-methods --every ${VALIDATE_LONG_EVERY:-31} ;;
    replay)
      need_traces
      M="--method fp --method kivi:bits=4 --method kivi:bits=2 --method gq-sink-hh --every 5 --no-progress"
      run_step replay_cpu "$KVSIM" replay --trace "$DEFAULT" $M --out "$WORK/cpu.h5" --csv "$WORK/cpu.csv"
      KVSIM_TIMING=1 run_step replay_gpu "$KVSIM" replay --device cuda --trace "$DEFAULT" $M --out "$WORK/gpu.h5" --csv "$WORK/gpu.csv"
      if cmp "$WORK/cpu.csv" "$WORK/gpu.csv"; then note "replay: CSV files identical ($(wc -l <"$WORK/cpu.csv") lines)"; else note "replay: CSV files DIFFER"; fi
      python3 - "$WORK/cpu.h5" "$WORK/gpu.h5" <<'PY' 2>&1 | tee -a "$SUMMARY"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1]), h5py.File(sys.argv[2])
n = 0
for m in a["methods"]:
    assert sorted(a["methods"][m].keys()) == sorted(b["methods"][m].keys()), m
    for k in a["methods"][m].keys():  # the metrics and the token-scale datasets
        x, y = a["methods"][m][k][...], b["methods"][m][k][...]
        assert x.tobytes() == y.tobytes(), (m, k)
        n += x.size
print(f"replay: results files bit-identical ({n} values: metrics and token-scale datasets)")
PY
      ;;
    compare)
      # no gnuplot on the device: the results files come back, the plots are drawn at home
      # (kvsim report OUT/compare/default/results.h5 --out rep)
      run_step compare "$KVSIM" compare --trace default --trace long --device cuda --no-progress --no-plots --out "$WORK/cmp"
      for t in default long; do
        mkdir -p "$OUT/compare/$t" && cp "$WORK/cmp/$t/results.h5" "$OUT/compare/$t/" 2>/dev/null
      done ;;
    bench) run_step bench "$KVSIM" bench attention ;;
    *) note "unknown step $s" ;;
  esac
done
rm -rf "$WORK"
