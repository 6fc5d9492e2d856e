#!/usr/bin/env bash
# A GPU session's checks, one mode per call of the device tool (each under its 10-minute limit), logs in $OUT.
#   bash scripts/gpu_check.sh correctness   # full test suite (xdist) and compute-sanitizer          (~8 min)
#   bash scripts/gpu_check.sh sweep         # every tile configuration x flag set, bf16 (~15000 kernels) (~6 min)
#   bash scripts/gpu_check.sh soak          # ~3000 random problems fwd+bwd, graph-capture variants    (~6 min)
#   bash scripts/gpu_check.sh tune          # the leads waiting for timing (see the mode)          (~6 min, 9 at most)
#   bash scripts/gpu_check.sh speed         # benchmarks against the peers, latency breakdown         (~5 min)
#   bash scripts/gpu_check.sh tune-forward | tune-wide | ab-wide | tune-backward | bench | bench-backward |
#       latency | suite | suite-backward | suite-kernels | sweep-forward | memcheck | memcheck-backward |
#       tune-prefetch | split-tests | tune-split | rule-check | ab-rule | rule-final | models-mamba |
#       models-heads | tune-models-a | tune-models-b | tune-head-tail | tune-head-tail-decode |
#       tune-mid | check-decode | tune-8192 | tune-leads-13 | tune-gated-wide | tune-gated-narrow |
#       tune-verify-14 | bench-14 | models-14 | final-14 | tune-leads-14 | tune-dtype-15 |
#       verify-15 | ab-15 | ab-issue-15 | final-15 | check-15 | bench-15 | leads-16 |
#       leads-16b | leads-16c | leads-17 | leads-17b | leads-17e | leads-17f | confirm-17 | check-17  # parts of
#       the above
#   bash scripts/gpu_check.sh profile-forward   # ncu counters of the wide and ungated forward, ours and compiled's
#   [PARALLEL_SECONDS=S] bash scripts/gpu_check.sh parallel "MODE..." "MODE..." ...  # on a machine of several GPUs: each quoted list
#       runs in order on a GPU of its own, all lists at once; logs in $OUT/GPU_MODE.log, everything else in
#       $OUT/results.tar.gz (the device tool brings back at most 8 files)
# On one H200 (16 cores) the suite takes about 7 minutes with -n 15. Host-bound timings (latency, the bench's
# eager columns) need the host to themselves: next to a sweep or the suite on the other GPU they ran 1.2-2x
# slower (session 10); kernel times (CUDA graphs) did not move.
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

run_tests() {  # run_tests SECONDS LOG PYTEST_ARGS...: pytest (15 workers) within SECONDS, its summary and failures
    local seconds=$1 log="$out/$2"
    shift 2
    timeout "$seconds" python3 -m pytest -q -n 15 -p no:cacheprovider -rfEx "$@" >"$log" 2>&1
    grep -E "passed|failed" "$log" | tail -1
    grep -E "^(FAILED|ERROR)" "$log" | head -30
}

run_suite() {  # the test suite within $1 seconds
    run_tests "$1" pytest_gpu.log tests --ignore=tests/test_transformers.py
}

run_bench() {  # bench.py with the extra arguments given, then its main table
    timeout 300 python3 scripts/bench.py --out "$out" --time-limit 280 "$@" >"$out/bench.log" 2>&1
    sed -n '/### Forward and forward+backward/,/### All results/p' "$out/bench.md"
}

tune_tiles() {  # tune_tiles LOG SECONDS "ROWS..." "SHAPES:TILES"...: tune_forward.py --only SHAPES --tile TILES at each
    # row count (prefill: 2^26 elements), each run within SECONDS, appended to LOG
    local log="$out/$1" seconds=$2 rows_list=$3 rows spec
    shift 3
    for rows in $rows_list; do
        [ "$rows" = prefill ] && rows=""
        for spec in "$@"; do
            timeout "$seconds" python3 scripts/tune_forward.py --only "${spec%%:*}" --tile "${spec##*:}" \
                ${rows:+--rows $rows} 2>&1 | grep -v "^  skip" | tee -a "$log"
        done
    done
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
suite-kernels)  # the forward's and the backward's tests and every configuration's, after a kernel change (~5 min)
    run_tests 330 pytest_kernels.log tests/test_forward.py tests/test_edge_cases.py tests/test_backward.py \
        tests/test_configs.py
    ;;
sweep-forward)  # every forward configuration x flag set, bf16, after a forward rule change (over 4 min: session 10's
    # run, after suite-kernels and next to a bench on the other GPU, did not end within 250 s)
    timeout 480 python3 -m custom_norm.config_sweep --split-several-rows --only forward --dtypes bfloat16 --workers 15 \
        --out "$out" 2>&1 | tail -20
    ;;
suite-backward)  # the backward's tests and every configuration's, after a backward kernel change (~3 min)
    run_tests 230 pytest_backward.log tests/test_backward.py tests/test_configs.py
    ;;
memcheck)
    SANITIZE_QUICK=1 SANITIZE_TOOLS=memcheck SANITIZE_TIMEOUT=230 SANITIZE_OUT="$out" timeout 520 \
        bash scripts/sanitize.sh 2>&1 | tail -12
    ;;
memcheck-backward)  # after a backward rule or kernel change
    SANITIZE_QUICK=1 SANITIZE_TOOLS=memcheck SANITIZE_PARTS=bwd SANITIZE_TIMEOUT=230 SANITIZE_OUT="$out" timeout 300 \
        bash scripts/sanitize.sh 2>&1 | tail -12
    ;;
tune-forward)
    timeout 150 python3 scripts/tune_forward.py --only "rms-nogate 8192 g8192,65536" --out "$out" 2>&1 \
        | grep -v "^  skip" | tail -14
    ;;
ab-wide)
    # the wide kernel against .ab_base's revision (ab_revisions.sh prepare REV), alternating on one card;
    # wide_32768 (one-pass tile) and mamba2 are controls; then the peers
    AB_CASES=wide_65536,wide_32768,mamba2_prefill OUT="$out" timeout 330 bash scripts/ab_revisions.sh run 3
    timeout 120 python3 scripts/bench.py --cases wide_65536,wide_32768 --no-sweep --out "$out/peers" --time-limit 100 \
        >"$out/peers.log" 2>&1
    sed -n '/### Forward and forward+backward/,/### Eager/p' "$out/peers/bench.md"
    ;;
tune-wide)
    timeout 480 python3 scripts/tune_forward.py --only "65536,49152,131072" --out "$out" 2>&1 | grep -v "^  skip"
    ;;
tune-backward)
    # session 8: the rules' configs with and without prefetching the next tile into L2 (8 or 16 elements
    # between addresses: one a thread in the rules' narrow tiles), and the row loop in two stages on mamba2
    timeout 300 python3 scripts/tune_backward.py --rule-only --prefetch 8,16 \
        --only "qwen3next,nemotron-h,groups of,one group 65536x1024,one group 32768x2048" --out "$out" 2>&1 \
        | grep -v "^  skip" | tail -60
    timeout 200 python3 scripts/tune_backward.py --rule-only --prefetch 8,16 --stages 2 --only mamba2 2>&1 \
        | grep -v "^  skip" | tail -12
    ;;
bench)
    run_bench --baseline docs/bench_2026-11-27_h200_run10.json
    ;;
bench-backward)  # the backward's partial sums, then the forward+backward cases with every peer (~4 min)
    timeout 60 python3 scripts/tune_partials_sum.py 2>&1 | tee "$out/partials_sum.log"
    run_bench --baseline docs/bench_2026-11-27_h200_run10.json --no-sweep --time-limit 170 \
        --cases mamba2_prefill_bwd,qwen3next_prefill_bwd,nemotronh_prefill_bwd
    ;;
latency)
    run_latency
    ;;
tune-models-a)  # session 13: forward tiles for the model suite's one-group widths short of fla orig (~6 min)
    for rows in "" 1 64 512; do
        timeout 150 python3 scripts/tune_forward.py --only "rms-gate-before 1536 " ${rows:+--rows $rows} 2>&1 \
            | grep -v "^  skip" | tee -a "$out/tune_1536.log"
    done
    for rows in "" 512 4096; do
        timeout 150 python3 scripts/tune_forward.py --only "rms-gate-before 8192 g8192" ${rows:+--rows $rows} 2>&1 \
            | grep -v "^  skip" | tee -a "$out/tune_8192.log"
    done
    ;;
tune-models-b)  # session 13: narrow rows between decode and prefill, 3072, and the backward of 1536 and 8192
    for rows in 32 2048 16384; do
        timeout 100 python3 scripts/tune_forward.py --only "rms-gate-after 128 " --rows $rows 2>&1 \
            | grep -v "^  skip" | tee -a "$out/tune_128.log"
    done
    timeout 100 python3 scripts/tune_forward.py --only "rms-gate-before 3072 " 2>&1 | grep -v "^  skip" \
        | tee -a "$out/tune_3072.log"
    timeout 200 python3 scripts/tune_backward.py --only "16384x1536,one group 16384x8192" --pps 2,4,8 2>&1 \
        | grep -v "^  skip" | tee "$out/tune_backward.log"
    ;;
tune-head-tail | tune-head-tail-decode)  # session 13: the rule's tiles of groups split into a head and a tail
    widths="rms-gate-before 1280 ,rms-gate-before 1536 ,rms-gate-before 2560 ,rms-gate-before 3072 "
    widths="$widths,rms-gate-before 5120 g5120 bfloat16,rms-gate-before 6144 g6144,rms-gate-before 12288 "
    widths="$widths,rms-gate-after 3072 "
    if [ "$1" = tune-head-tail ]; then
        timeout 400 python3 scripts/tune_forward.py --only "$widths" --out "$out" 2>&1 | grep -v "^  skip" \
            | tee "$out/tune_head_tail.log"
    else
        for rows in 1 64; do
            mkdir -p "$out/rows$rows"
            timeout 150 python3 scripts/tune_forward.py --only "$widths" --rows $rows --out "$out/rows$rows" 2>&1 \
                | grep -v "^  skip" | tee -a "$out/tune_head_tail_decode.log"
        done
    fi
    ;;
tune-mid)  # session 13: the head + tail rule between decode and prefill sizes, against the rule before it and padding
    for spec in "1280:1x1024+256x8,1x2048x8,1x2048x2" "1536:1x1024+512x8,1x2048x8,1x2048x2,2x2048x8" \
                "2560:1x2048+512x16,1x4096x16,1x4096x4" "3072:1x2048+1024x16,1x4096x16,1x4096x4"; do
        for rows in 128 512 2048 ""; do
            timeout 60 python3 scripts/tune_forward.py --only "rms-gate-before ${spec%%:*} " --tile "${spec#*:}" \
                ${rows:+--rows $rows} 2>&1 | grep -v "^  skip\|^device" | tee -a "$out/tune_mid.log"
        done
    done
    timeout 240 python3 scripts/tune_backward.py --only "16384x1536,16384x1280,16384x2560,16384x3072" --pps 4,8 \
        --out "$out" 2>&1 | grep -v "^  skip" | tee "$out/tune_backward.log"
    ;;
tune-8192)  # session 13: one gated group of 8192 (Bamba-9b, 0.95-0.98x fla orig) at 32 and 16 warps against the rule's 8;
    # TUNE_8192_ROWS chooses the row counts (prefill: 2^26 elements)
    tune_tiles tune_8192.log 60 "${TUNE_8192_ROWS:-prefill 512 4096}" \
        "rms-gate-before 8192 g8192,rms-gate-after 8192 g8192:1x8192x32,1x8192x16"
    ;;
tune-leads-13)  # session 13's leads for the next session (~5 min): one gated group of 8192 at 16 and 32 warps from
    # 2048 rows, and whether decode-style tiles win between decode and prefill sizes on narrow groups (2048 x 128:
    # 8 rows at 8 warps 1.9 us against the rule's 16 at 4, 2.1), full sweeps with the JSON kept
    TUNE_8192_ROWS="2048 4096 prefill" OUT="$out" bash "$0" tune-8192
    for rows in 128 512 2048 8192; do
        mkdir -p "$out/rows$rows"
        timeout 100 python3 scripts/tune_forward.py --only "rms-gate-after 128 ,rms-gate-before 8192 g1024" \
            --rows $rows --out "$out/rows$rows" 2>&1 | grep -v "^  skip" | tee -a "$out/tune_narrow_mid.log"
    done
    ;;
tune-gated-wide)  # session 14: one-row gated tiles of 8192-16384 columns (and heads + tails) at more warps than the
    # rule's 32 elements a thread (Bamba-9b's group of 8192: 16 and 32 warps 2-7 % faster from 2048 rows)
    tune_tiles tune_gated_wide.log 100 "128 512 2048 prefill" \
        "rms-gate-before 8192 g8192,rms-gate-after 8192 g8192,layer-bias-gate-before 8192 g8192:1x8192x16,1x8192x32" \
        "rms-gate-before 16384 g16384,rms-gate-after 16384 g16384:1x16384x32" \
        "rms-gate-before 6144 g6144:1x4096+2048x16,1x4096+2048x32" \
        "rms-gate-before 5120 g5120 bfloat16:1x4096+1024x16,1x4096+1024x32" \
        "rms-gate-before 12288 g12288:1x8192+4096x32"
    ;;
tune-gated-narrow)  # session 14: gated tiles of several rows of 128-1024 columns at 8 elements a thread against the
    # rule's 16 (2048 x 128, gate after: 1.9 against 2.1 us)
    tune_tiles tune_gated_narrow.log 100 "128 512 2048 8192 prefill" \
        "rms-gate-after 128 ,rms-gate-before 128 :16x128x8,8x128x4,8x128x8,4x128x4" \
        "rms-gate-after 8192 g256:16x256x8,8x256x8,4x256x4" "rms-gate-before 8192 g512:4x512x8,2x512x4" \
        "rms-gate-after 8192 g1024,rms-gate-before 8192 g1024:2x1024x8,1x1024x4"
    ;;
tune-verify-14)  # session 14's rule (gated RMSNorm tiles of 8192 columns and more at 16 elements a thread, gated groups
    # of up to 128 columns at 8) against the rule before it, on shapes the first timings did not cover: LayerNorm,
    # float32, groups of 64 and 32
    tune_tiles tune_verify.log 100 "512 2048 prefill" \
        "layer-gate-after 8192 g8192:1x8192x16" "layer-bias-gate-before 16384 g16384:1x16384x32" \
        "rms-gate-before 5120 g5120 float32:1x4096+1024x8" "rms-gate-before 8192 g8192 float32:1x8192x8" \
        "layer-gate-after 128 :16x128x4" "rms-gate-after 64 :32x64x4,16x64x4" "rms-gate-before 8192 g32 :64x32x4,32x32x4"
    ;;
leads-16)  # session 16 (~3 min): weight and bias first on ungated one-row tiles of 8192 and 16384 columns (loaded
    # after the statistics now), float32 ungated 8192 at more warps (gated float32 8192 took 32 at every row
    # count), and Bamba-9b's gated 8192 at 4096 and 16384 rows at 8 and 16 warps either way (fla orig's 8-warp
    # tile 1 % ahead at 16384 rows)
    tune_tiles tune_leads_16.log 60 "128 512 2048" \
        "rms-nogate 8192 g8192 bfloat16:1x8192x8w,1x8192x16a" "layer-bias-nogate 8192 g8192 bfloat16:1x8192x8w,1x8192x16a" \
        "rms-nogate 16384 g16384 bfloat16:1x16384x16w,1x16384x32a" \
        "rms-nogate 8192 g8192 float32:1x8192x16a,1x8192x32a,1x8192x8w"
    tune_tiles tune_leads_16.log 60 "4096 16384" "rms-gate-before 8192 g8192 bfloat16:1x8192x8a,1x8192x8w,1x8192x16a"
    ;;
leads-16b)  # session 16 (~3 min), after leads-16: gated RMSNorm 8192 at 8 and 16 warps with weight first from 1024
    # rows to 2^26 elements (bf16 gate before: 8 warps first beat the rule's 32 at 4096 and 16384 rows), float32 and
    # the gate after alike; ungated RMSNorm 8192 in one pass (weight first) against the two passes at 2^26 and 2^27,
    # and 16384 weight after against the new rule's first at 4096 and 8192 rows
    tune_tiles tune_leads_16b.log 60 "1024 2048 8192" \
        "rms-gate-before 8192 g8192 bfloat16:1x8192x8w,1x8192x16w,1x8192x32a"
    tune_tiles tune_leads_16b.log 60 "2048 8192" "rms-gate-before 8192 g8192 float32:1x8192x8w,1x8192x16w" \
        "rms-gate-after 8192 g8192 bfloat16:1x8192x8w,1x8192x8a,1x8192x16w"
    tune_tiles tune_leads_16b.log 60 "8192 16384" "rms-nogate 8192 g8192 bfloat16:1x8192x8w,1x8192x16w"
    tune_tiles tune_leads_16b.log 60 "4096 8192" "rms-nogate 16384 g16384 bfloat16:1x16384x16a"
    tune_tiles tune_leads_16b.log 60 "8192" "rms-nogate 8192 g8192 float32:1x8192x8w,1x8192x16w"
    ;;
leads-16c)  # session 16's rule (~3 min): bf16 RMSNorm 8192 with the gate before the norm at 16 warps, weight first,
    # against the previous rule's 32 warps after and 8 first, 2048 rows to 2^27 elements; ungated RMSNorm 8192 at
    # 4096 rows and 16384 at 1024 (weight first now) against weight after
    tune_tiles tune_leads_16c.log 60 "2048 4096 8192 16384" \
        "rms-gate-before 8192 g8192 bfloat16:1x8192x32a,1x8192x8w"
    tune_tiles tune_leads_16c.log 60 "4096" "rms-nogate 8192 g8192:1x8192x8a"
    tune_tiles tune_leads_16c.log 60 "1024" "rms-nogate 16384 g16384 bfloat16:1x16384x16a"
    ;;
leads-17)  # for session 17 (~4 min): Kimi-Linear's sigmoid-gated groups of 128 (0.98x / 1.00x / 0.99x torch.compile at
    # 64 / 4096 / 16384 tokens in session 16) at the rule's tile and its neighbours, 2048 rows to 2^26 elements,
    # beside the SiLU (Qwen3-Next) tile; then both models' rows beside the peers
    tune_tiles tune_leads_17.log 100 "2048 131072 prefill" \
        "rms-sigmoid-gate-after 128 g128 bfloat16:16x128x8a,16x128x4,32x128x8,32x128x16,8x128x4" \
        "rms-gate-after 128 g128 bfloat16:16x128x4,32x128x8"
    run_bench --suite models --providers ours,fla_orig,fla_fused,compiled --cases "qwen3-next*,kimi-linear*" \
        --time-limit 150
    ;;
leads-17b)  # for session 17 (~4 min): the split kernel at decode sizes (wide decode 32 x 65536 was 0.96x
    # torch.compile in session 16): part widths and warps, one cooperative launch (with its counter memset) or
    # two launches (t), at 1-96 rows; groups the one-pass kernel holds (32768, 8192, 5120) at one row too; a
    # memset alone in a CUDA graph; then the wide cases beside the peers
    split_decode() {  # split_decode ROWS... : tune_forward --split at each row count
        local shape=$1 splits=$2 rows
        shift 2
        for rows in "$@"; do
            timeout 100 python3 scripts/tune_forward.py --only "$shape" --rows "$rows" --split "$splits" 2>&1 \
                | grep -v "^  skip" | tee -a "$out/tune_leads_17b.log"
        done
    }
    wide="8192x8,8192x8t,4096x4,4096x4t,4096x8,2048x2,2048x4,16384x16"
    split_decode "rms-gate-after 65536 g65536 bfloat16" "$wide,looped" 1 16 32 64 96
    split_decode "rms-gate-before 65536 g65536 bfloat16" "$wide" 32
    split_decode "rms-nogate 65536 g65536 bfloat16" "$wide" 32
    split_decode "rms-gate-after 32768 g32768 bfloat16" "8192x8,8192x8t,4096x4,4096x4t" 1 32
    split_decode "rms-gate-before 8192 g8192 bfloat16" "4096x4,2048x2,2048x4,2048x2t" 1
    split_decode "rms-gate-before 5120 g5120 bfloat16" "2048x2,1024x1,1024x2" 1
    python3 - <<'PY' 2>&1 | tee -a "$out/tune_leads_17b.log"
import torch
from triton.testing import do_bench_cudagraph
for n in (1, 32, 96):
    t = do_bench_cudagraph(lambda: torch.zeros(n, dtype=torch.int32, device="cuda"))
    print(f"memset of {n} int32 in a CUDA graph: {t * 1e3:.2f} us")
PY
    run_bench --no-sweep --providers ours,fla_orig,fla_fused,compiled --cases "wide_*" --time-limit 150
    ;;
leads-17e)  # for session 17 (~3 min): the looped kernel's pass 2 storing its output evict_first (--store-hint), so
    # that the output's lines leave L2 before the x lines pass 2 has yet to read again; the rule's looped configs
    # (wide gate after the norm, ungated LayerNorm, and the two-pass ungated RMSNorm 8192 that is 0.99x compiled)
    hint() {  # hint ELEMENTS SHAPE...
        local elements=$1 shape
        shift
        for shape in "$@"; do
            timeout 100 python3 scripts/tune_forward.py --only "$shape" --elements "$elements" --store-hint 2>&1 \
                | grep -v "^  skip" | tee -a "$out/tune_leads_17e.log"
        done
    }
    hint 67108864 "rms-gate-after 65536 g65536 bfloat16" "rms-gate-after 131072 g131072 bfloat16" \
        "layer-bias-nogate 65536 g65536 bfloat16" "layer-bias-nogate 49152" "rms-nogate 8192 g8192 bfloat16"
    hint 134217728 "rms-gate-after 65536 g65536 bfloat16" "rms-nogate 8192 g8192 bfloat16" \
        "rms-nogate 8192 g8192 float32"
    timeout 100 python3 scripts/tune_forward.py --only "rms-gate-after 65536 g65536 bfloat16" \
        --looped 8192x32vsp8,8192x32hvsp8,8192x16hvs 2>&1 | grep -v "^  skip" | tee -a "$out/tune_leads_17e.log"
    ;;
confirm-17)  # session 17's rule (pass 2 of the gated looped kernel stores evict_first): the wide cases beside the
    # peers against the same cases' run before it (leads-17b), then the wide kernel tests and configurations
    run_bench --no-sweep --providers ours,fla_orig,fla_fused,compiled --cases "wide_*" --time-limit 150 \
        --baseline docs/bench_2026-11-28_h200_wide_session17.json
    sed -n '/### Against the baseline/,$p' "$out/bench.md" | head -20
    ;;
check-17)  # session 17: the wide and split kernel tests (and the two-chunk ones), and every wide configuration x
    # flag set (bf16, float32)
    run_tests 200 pytest_split.log tests/test_forward.py -k "split or wide or chunk or float32"
    timeout 300 python3 -m custom_norm.config_sweep --wide-only --workers 15 --out "$out" 2>&1 | tail -5
    ;;
leads-17f)  # for session 17 (~2 min): the store hint again where leads-17e left it open: ungated RMSNorm 8192 in two
    # chunks (float32 1.5 % faster at 2^27, bf16 0.5 % slower) and ungated LayerNorm on the looped kernel (0.3-1 %)
    for round in 1 2; do
        for elements in 67108864 134217728; do
            timeout 100 python3 scripts/tune_forward.py --only "rms-nogate 8192 g8192" --elements "$elements" \
                --store-hint 2>&1 | grep -v "^  skip" | tee -a "$out/tune_leads_17f.log"
        done
        timeout 100 python3 scripts/tune_forward.py --only "layer-bias-nogate 65536 g65536,layer-bias-nogate 49152" \
            --store-hint 2>&1 | grep -v "^  skip" | tee -a "$out/tune_leads_17f.log"
    done
    ;;
bench-15)  # the issue's cases with session 15's kernel, beside the peers, against run 15 (no sweep); with
    # models-mamba and models-heads on the other GPU, the run session 15 could not make
    run_bench --no-sweep --baseline docs/bench_2026-11-28_h200_run15.json --time-limit 250
    ;;
bench-14)  # session 14: the issue's cases against run 14 (no sweep)
    run_bench --no-sweep --baseline docs/bench_2026-11-28_h200_run14.json --time-limit 200
    ;;
models-14)  # session 14: the model suite's rows the rule moves
    run_bench --suite models --providers ours,fla_orig,fla_fused,compiled \
        --cases "bamba-*,qwen3-next*,kimi-linear*,mamba2-2.7b*" --time-limit 150
    ;;
final-14)  # session 14's rule against the rule before it where neither timing run looked (gated LayerNorm 12288,
    # float32 groups of 128, LayerNorm 16384 at 128 rows), and float32 8192 at 32 warps (a lead)
    tune_tiles tune_final.log 100 "128 512 2048 prefill" \
        "layer-bias-gate-before 12288 g12288:1x8192+4096x16" "rms-gate-after 128 g128 float32:16x128x4" \
        "layer-bias-gate-before 16384 g16384:1x16384x16" "rms-gate-before 8192 g8192 float32:1x8192x8,1x8192x32"
    ;;
tune-leads-14)  # session 14's lead for the next session (~5 min): a rule that knows the dtype. One-row gated tiles of
    # 8192 columns (and 5120 / 6144 heads + tails) at 8, 16 and 32 warps in float32 and bf16, 128 rows to 2^26
    # elements (float32 gate before: 32 warps 10-28 % faster at 128 and 2048 rows and 2^26; bf16: from 2048 rows)
    tune_tiles tune_leads_14.log 150 "128 512 1024 2048 prefill" \
        "rms-gate-before 8192 g8192,rms-gate-after 8192 g8192,layer-bias-gate-before 8192 g8192:1x8192x8,1x8192x16,1x8192x32" \
        "rms-gate-before 5120 g5120:1x4096+1024x8,1x4096+1024x16,1x4096+1024x32" \
        "rms-gate-before 6144 g6144:1x4096+2048x8,1x4096+2048x16,1x4096+2048x32"
    ;;
check-decode)  # session 13's decode rule: the issue's decode cases and Nemotron-H 4b's (groups of 896), all peers
    run_bench --no-sweep --cases "mamba2_decode,mamba2_batch,nemotronh_decode,qwen3next_decode" --time-limit 100
    mkdir -p "$out/issue" && mv "$out"/bench.* "$out/issue/"
    run_bench --suite models --providers ours,fla_orig,fla_fused,compiled --cases "nemotron-h-4b_t1,nemotron-h-4b_t64" \
        --time-limit 60
    ;;
models-mamba | models-heads)  # session 13: bench.py --suite models, the Mamba2/Bamba rows or the others (~5 min each)
    patterns="mamba2-*,bamba-*"
    [ "$1" = models-heads ] && patterns="nemotron-h-*,qwen3-next*,kimi-linear*"
    run_bench --suite models --providers ours,fla_orig,fla_fused,compiled --cases "$patterns" --time-limit 250
    ;;
profile-forward)  # ncu: where the forward's time goes on wide 65536 and ungated RMSNorm, ours and compiled's kernel
    metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct
    metrics=$metrics,lts__t_bytes.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread
    metrics=$metrics,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active
    for shape in "wide 65536" "rms nogate"; do
        for who in "" --compiled; do
            echo "== $shape ${who:-ours}"
            timeout 120 ncu --clock-control none --kernel-name regex:"_fwd|triton_" --launch-skip 2 --launch-count 1 \
                --metrics "$metrics" --section WarpStateStats \
                python3 scripts/profile_kernels.py --only "$shape" $who 2>&1 | grep -v "^==PROF==" | tail -45
        done
    done 2>&1 | tee "$out/profile_forward.log"
    ;;
tune-dtype-15)  # session 15: whether float32 gated tiles want fewer elements a thread than bf16's away from 8192
    # columns (4096 / 2048 at the rule's warps and twice them and half, 1024 in two-row tiles, 128 in 16-row tiles),
    # bf16 beside them; float32 16384 at 16 and 32 warps
    tune_tiles tune_dtype_15.log 150 "128 512 2048 prefill" \
        "rms-gate-before 4096 g4096:1x4096x8,1x4096x16,1x4096x32" \
        "rms-gate-before 2048 g2048:1x2048x4,1x2048x8,1x2048x16" \
        "rms-gate-after 1024 g1024:2x1024x4,2x1024x8,2x1024x16,1x1024x8" \
        "rms-gate-after 128 g128 float32:16x128x8,16x128x16,8x128x8" \
        "rms-gate-before 16384 g16384 float32:1x16384x16,1x16384x32"
    ;;
verify-15)  # session 15's dtype-aware rule (float32 groups of 6145-8192 at 8 elements a thread, bf16 RMSNorm at 16
    # below WIDE_TILE_MIN_ROWS and 8 with the gate before from it) against the rule before, then the Bamba-9b rows
    tune_tiles tune_verify_15.log 120 "128 512 1024 2048 prefill" \
        "layer-gate-after 8192 g8192 float32:1x8192x8" "rms-gate-before 8192 g8192 bfloat16:1x8192x8,1x8192x16" \
        "rms-gate-after 8192 g8192 bfloat16:1x8192x8" "rms-gate-before 7168 g7168:1x8192x8,1x8192x16"
    run_bench --suite models --providers ours,fla_orig,fla_fused,compiled --cases "bamba-*" --time-limit 120
    ;;
ab-15 | ab-issue-15)  # session 15's kernel variants (carry .ab_base, .ab_div): the rule's commit, "/" for the
    # variance, and the working tree ("/" and weight and bias loaded with x and z); model rows or the issue's
    # forward cases, two rounds. ab-issue-15 first times the float32 rows verify-15 missed, on the "/" variant.
    if [ "$1" = ab-15 ]; then
        AB_SIDES=.ab_div AB_ARGS="--suite models" AB_CASES="bamba-9b_t64,bamba-9b_t512,bamba-9b_t4096,bamba-9b_t16384,mamba2-130m_t512,mamba2-130m_t16384,mamba2-1.3b_t4096,mamba2-2.7b_t512,mamba2-2.7b_t16384,nemotron-h-4b_t4096,nemotron-h-8b_t16384,nemotron-h-56b_t4096,qwen3-next_t64,qwen3-next_t16384" \
            OUT="$out" bash scripts/ab_revisions.sh run 2 | tee "$out/ab_models.log"
    else
        (cd .ab_div && PYTHONPATH=/tmp/site:$PWD OUT="$out" tune_tiles tune_fp32_15.log 120 "128 512 1024 2048 prefill" \
            "layer-gate-after 8192 g8192 float32:1x8192x8" "rms-gate-before 7168 g7168 float32:1x8192x8,1x8192x16")
        AB_SIDES=.ab_div AB_CASES="qwen3next_decode,qwen3next_prefill,mamba2_batch,mamba2_prefill,mamba2_prefill_fp32,nemotronh_prefill,layernorm_bias,wide_32768,wide_65536" \
            OUT="$out" bash scripts/ab_revisions.sh run 2 | tee "$out/ab_issue.log"
    fi
    ;;
final-15 | check-15)  # session 15's final kernel (weight and bias loaded first below 32 warps) against the rule's
    # commit (carry .ab_base): final-15 the kernel tests then the issue's forward cases; check-15 the model rows,
    # then one-pass tiles the A/B did not cover, the rule's (weight first) against weight after (a)
    if [ "$1" = final-15 ]; then
        run_tests 330 pytest_kernels.log tests/test_forward.py tests/test_edge_cases.py tests/test_backward.py \
            tests/test_configs.py
        AB_CASES="qwen3next_decode,qwen3next_prefill,mamba2_batch,mamba2_prefill,mamba2_prefill_fp32,nemotronh_prefill,layernorm_bias,wide_32768,nemotronh_decode,mamba2_decode" \
            OUT="$out" bash scripts/ab_revisions.sh run 1 | tee "$out/ab_issue.log"
    else
        AB_ARGS="--suite models" AB_CASES="bamba-9b_t512,bamba-9b_t4096,bamba-9b_t16384,mamba2-130m_t512,mamba2-130m_t4096,mamba2-130m_t16384,mamba2-1.3b_t512,mamba2-1.3b_t16384,mamba2-2.7b_t512,mamba2-2.7b_t4096,nemotron-h-4b_t512,nemotron-h-4b_t16384,nemotron-h-8b_t512,nemotron-h-56b_t512,nemotron-h-56b_t16384,qwen3-next_t64,qwen3-next_t512,kimi-linear_t64,kimi-linear_t4096" \
            OUT="$out" bash scripts/ab_revisions.sh run 2 | tee "$out/ab_models.log"
        tune_tiles tune_check_15.log 100 "512 2048 prefill" \
            "layer-bias-gate-before 8192 g8192 bfloat16:1x8192x8a" "rms-gate-after 8192 g8192 bfloat16:1x8192x16a" \
            "layer-bias-gate-before 12288 g12288:1x8192+4096x16a" "layer-bias-nogate 4096 g4096 bfloat16:2x4096x8a" \
            "rms-gate-before 8192 g1024 bfloat16:2x1024x4a"
    fi
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
    # PARALLEL_SECONDS: stop waiting after this many seconds and pack what is there (a run past the device
    # tool's limit would bring nothing back from results/)
    deadline=$((SECONDS + ${PARALLEL_SECONDS:-100000}))
    while [ -n "$(jobs -rp)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 2; done
    [ -n "$(jobs -rp)" ] && echo "PARALLEL_SECONDS ($PARALLEL_SECONDS) passed: packed with modes still running"
    tar -czf "$out/results.tar.gz" -C "$out" results && rm -rf "$out/results"
    ;;
tune-prefetch)  # session 10: the wide kernel's next-chunk prefetch, and register caps on one-pass tiles
    timeout 360 python3 scripts/tune_forward.py --only "65536,49152,131072,40000" --prefetch 8,16,64 2>&1 \
        | tee "$out/tune_prefetch.log"
    timeout 200 python3 scripts/tune_forward.py --only "rms-nogate 8192 g8192,layer-bias-nogate 4096 g4096" \
        --elements 134217728 --max-registers 32,40,48 2>&1 | tee "$out/tune_registers.log"
    timeout 60 python3 scripts/tune_partials_sum.py 2>&1 | tee "$out/partials_sum.log"
    ;;
split-tests)  # session 11: the split kernel's tests (cooperative launch, CUDA graph) and the wide ones (~1 min)
    run_tests 200 pytest_split.log tests/test_forward.py -k "split or wide"
    python3 tests/compile_kernels.py | tail -3
    ;;
tune-split)  # session 11: the split kernel (a wide group's parts on programs that exchange statistics) against
    # the rule, prefill and decode rows, parts of 8192-32768 columns; SPLIT_ROWS, SPLIT_ONLY, SPLITS and
    # SPLIT_TIMEOUT (seconds a tune_forward.py run) choose other timings
    for rows in ${SPLIT_ROWS:-prefill 1 32}; do
        [ "$rows" = prefill ] && rows=""
        timeout "${SPLIT_TIMEOUT:-300}" python3 scripts/tune_forward.py ${rows:+--rows $rows} \
            --only "${SPLIT_ONLY:-rms-gate-after 32768,rms-gate-after 65536,rms-gate-after 131072,rms-gate-before 65536,nogate 65536,layer-bias-gate-before 40000}" \
            --split "${SPLITS:-8192x8,8192x16,16384x16,16384x32,32768x32}" 2>&1 | grep -v "^  skip" \
            | tee -a "$out/tune_split.log"
    done
    ;;
tune)
    # session 12's leads (~6 min): the split kernel's decode count (rows x groups) on one, two and four groups of
    # 65536 around FEW_ROWS; ungated RMSNorm on the looped kernel shaped as Inductor's (one reduction a row, L2
    # hints, chunks of 1024-4096, register caps) against the one-pass tile; Inductor's own config for that case;
    # nemotron-h's decode tile
    SPLIT_ROWS="8 16 24 32" SPLIT_ONLY="262144 g65536,rms-gate-after 131072 g65536" SPLITS="looped,8192x8" \
        SPLIT_TIMEOUT=45 OUT="$out" bash "$0" tune-split
    timeout 200 python3 scripts/tune_forward.py --elements 134217728 \
        --only "rms-nogate 4096 g4096,rms-nogate 8192 g8192,rms-nogate 16384 g16384" \
        --looped "2048x16ho,2048x16hor32,2048x8ho,4096x16ho,4096x16hor40,4096x8ho,1024x8ho,2048x16h" 2>&1 \
        | grep -v "^  skip" | tee "$out/tune_looped_rms.log"
    timeout 90 python3 scripts/inductor_code.py --case rms_nogate --out "$out" 2>&1 \
        | grep -E "BLOCK|num_warps|num_stages|evict|for r0|us$" | head -40 | tee "$out/inductor_rms.log"
    timeout 60 python3 scripts/tune_forward.py --rows 1 --only "rms-gate-before 8192 g1024" 2>&1 \
        | grep -v "^  skip" | tee "$out/tune_nemotron_decode.log"
    ;;
rule-check)  # session 12's rule changes, timed: ungated RMSNorm of 2049-8192 columns in two looped chunks against
    # the one-pass tiles the rule chose before, at 2^27 and 2^24 elements; the split kernel up to 96 (row, group)
    # programs, one group of 65536 at 96 and 128 rows
    for shape in "4096:2x4096x8" "8192:1x8192x8" "2560:2x4096x8" "3072:2x4096x8" "5120:1x4096+1024x8" \
                 "6144:1x4096+2048x8"; do
        for elements in 134217728 16777216; do
            timeout 60 python3 scripts/tune_forward.py --elements $elements --only "rms-nogate ${shape%%:*} g${shape%%:*}" \
                --tile "${shape#*:}" 2>&1 | grep -v "^  skip" | tee -a "$out/rule_check.log"
        done
    done
    SPLIT_ROWS="96 128" SPLIT_ONLY="rms-gate-after 65536 g65536,layer-bias-nogate 65536 g65536" SPLITS="looped,8192x8" \
        SPLIT_TIMEOUT=45 OUT="$out" bash "$0" tune-split
    ;;
rule-final)  # session 12's final rule: the forward's and every configuration's tests, and the two-pass rule at
    # 2^26 elements (its threshold) against the one-pass tiles
    run_tests 240 pytest_rule.log tests/test_forward.py tests/test_configs.py tests/test_edge_cases.py
    for shape in "4096:2x4096x8" "8192:1x8192x8"; do
        timeout 60 python3 scripts/tune_forward.py --elements 67108864 --only "rms-nogate ${shape%%:*} g${shape%%:*}" \
            --tile "${shape#*:}" 2>&1 | grep -v "^  skip" | tee -a "$out/rule_final.log"
    done
    ;;
ab-rule)  # the working tree's rules against .ab_base's (ab_revisions.sh prepare REV), alternating on one card
    AB_CASES=rms_nogate,layernorm_bias,mamba2_prefill,wide_65536,wide_65536_decode OUT="$out" timeout 330 \
        bash scripts/ab_revisions.sh run 3
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
