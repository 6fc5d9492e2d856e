#!/usr/bin/env bash
# A GPU session's checks, one mode per call of the device tool (each under its 10-minute limit), logs in $OUT.
#   bash scripts/gpu_check.sh correctness   # full test suite (xdist) and compute-sanitizer          (~8 min)
#   bash scripts/gpu_check.sh sweep         # every tile configuration x flag set, bf16 (~15000 kernels) (~6 min)
#   bash scripts/gpu_check.sh soak          # ~3000 random problems fwd+bwd, graph-capture variants    (~6 min)
#   bash scripts/gpu_check.sh tune          # tile sweeps of the leads waiting for timing             (~8 min)
#   bash scripts/gpu_check.sh speed         # benchmarks against the peers, latency breakdown         (~5 min)
#   bash scripts/gpu_check.sh tune-forward | tune-wide | ab-wide | tune-backward | bench | latency | suite | memcheck  # parts of the above
#   bash scripts/gpu_check.sh parallel "MODE..." "MODE..." ...  # on a machine of several GPUs: each quoted list
#       runs in order on a GPU of its own, all lists at once; logs in $OUT/GPU_MODE.log, everything else in
#       $OUT/results.tar.gz (the device tool brings back at most 8 files)
# On one H200 (16 cores) the suite takes about 7 minutes with -n 15.
# Peers and test-only packages travel as wheels in .whl/ (scripts/PEERS.md); carry it with the call.
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
if [ -n "${GPU_CHECK_INSTALLED:-}" ]; then
    :  # a parallel run's parent installed the wheels and set PYTHONPATH
elif compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export GPU_CHECK_INSTALLED=1
export PYTHONUNBUFFERED=1

run_suite() {  # the test suite within $1 seconds
    timeout "$1" python3 -m pytest -q -n 15 -p no:cacheprovider tests --ignore=tests/test_transformers.py -rfEx \
        >"$out/pytest_gpu.log" 2>&1
    grep -E "passed|failed" "$out/pytest_gpu.log" | tail -1
    grep -E "^(FAILED|ERROR)" "$out/pytest_gpu.log" | head -30
}

run_bench() {  # bench.py with the extra arguments given, then its main table
    timeout 300 python3 scripts/bench.py --out "$out" --time-limit 280 "$@" >"$out/bench.log" 2>&1
    sed -n '/### Forward and forward+backward/,/### All results/p' "$out/bench.md"
}

run_latency() {
    timeout 150 python3 scripts/latency.py 2>&1 | tee "$out/latency.log"
}

case "${1:-}" in
correctness)
    run_suite 450
    SANITIZE_QUICK=1 SANITIZE_TIMEOUT=45 SANITIZE_OUT="$out" timeout 140 bash scripts/sanitize.sh 2>&1 | tail -12
    ;;
sweep)
    timeout 60 python3 scripts/triton_ngroups_repro.py 2>&1 | tail -2
    timeout 490 python3 -m custom_norm.config_sweep --split-several-rows --dtypes bfloat16 --workers 15 --out "$out" 2>&1 | tail -40
    ;;
suite)
    run_suite 500
    ;;
memcheck)
    SANITIZE_QUICK=1 SANITIZE_TOOLS=memcheck SANITIZE_TIMEOUT=230 SANITIZE_OUT="$out" timeout 520 \
        bash scripts/sanitize.sh 2>&1 | tail -12
    ;;
tune-forward)
    timeout 150 python3 scripts/tune_forward.py --only "rms-nogate 8192 g8192,65536" --out "$out" 2>&1 \
        | grep -v "^  skip" | tail -14
    ;;
ab-wide)
    # the wide rule of session 7 against the commit before it, alternating on one card; then the peers
    AB_CASES=wide_65536,wide_32768,mamba2_prefill OUT="$out" timeout 330 bash scripts/ab_revisions.sh run 3
    timeout 120 python3 scripts/bench.py --cases wide_65536,wide_32768 --no-sweep --out "$out/peers" --time-limit 100 \
        >"$out/peers.log" 2>&1
    sed -n '/### Forward and forward+backward/,/### Eager/p' "$out/peers/bench.md"
    ;;
tune-wide)
    timeout 480 python3 scripts/tune_forward.py --only "65536,49152,131072" --out "$out" 2>&1 | grep -v "^  skip"
    ;;
tune-backward)
    timeout 540 python3 scripts/tune_backward.py --reload --pps 2,16 --max-registers 72,80,96 \
        --only "mamba2,one group" --out "$out" 2>&1 | grep -v "^  skip" | tail -80
    ;;
bench)
    run_bench --baseline docs/bench_2026-11-27_h200_run7.json
    ;;
latency)
    run_latency
    ;;
parallel)
    shift
    mkdir -p "$out/results"
    gpu=0
    for modes in "$@"; do
        (
            for mode in $modes; do
                CUDA_VISIBLE_DEVICES=$gpu OUT="$out/results/$mode" bash "$0" "$mode" >"$out/${gpu}_$mode.log" 2>&1
            done
        ) &
        gpu=$((gpu + 1))
    done
    wait
    tar -czf "$out/results.tar.gz" -C "$out" results && rm -rf "$out/results"
    ;;
tune)
    # session 8's leads (BENCHMARKS.md, session 7 notes): ungated one-group 8192 at the benchmark's 16384 rows
    # (4 % behind torch.compile; the looped kernel's times spread 128-197 µs there: measure the spread
    # again), with and without reduce_once; gated groups of 131072 (the rule's 32 warps with hints 3 % behind
    # 8 warps without); float32 mamba2 with 32 warps (1.5 % in session 6)
    timeout 200 python3 scripts/tune_forward.py --only "rms-nogate 8192 g8192" --elements 134217728 \
        --out "$out" 2>&1 | grep -v "^  skip" | tail -8
    timeout 100 python3 scripts/tune_forward.py --reduce-once --elements 134217728 --only "rms-nogate 8192 g8192" \
        2>&1 | grep -v "^  skip" | tail -8
    timeout 150 python3 scripts/tune_forward.py --only "131072 g131072,rms-gate-before 5120" 2>&1 \
        | grep -v "^  skip" | tail -20
    ;;
soak)
    timeout 230 python3 scripts/soak.py --seconds 200 --out "$out" 2>&1 | tail -5
    timeout 150 python3 scripts/capture_check.py 2>&1 | tee "$out/capture.log"
    ;;
speed)
    run_bench
    run_latency
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh MODE (see the comment at the top) | parallel \"MODE...\" ..." >&2
    exit 2
    ;;
esac
