#!/usr/bin/env bash
# compute-sanitizer over the Triton kernels of norm_gated on edge shapes (issue 6), on a CUDA machine:
#   memcheck  on the forward, and on the backward when norm_gated::bwd exists;
#   racecheck on the backward when it exists (and on the forward: its reductions share memory too).
# The driver is scripts/sanitize_driver.py (edge shapes, every dtype and flag set, results checked).
# Prints one summary line per run and exits non-zero on any sanitizer error or wrong result.
#
#   bash scripts/sanitize.sh
#
# Environment: PYTHON (default python), COMPUTE_SANITIZER (path of the binary; else found on PATH or under
# /usr/local/cuda*/bin), SANITIZE_OUT (log directory, default
# $TMPDIR/custom_norm_sanitize), SANITIZE_TIMEOUT (seconds per
# sanitized run, default 300), SANITIZE_QUICK=1 (fewer flag sets), SANITIZE_TOOLS (default
# "memcheck racecheck"; synccheck and initcheck work too), SANITIZE_PARTS (default "fwd bwd"; the kernels to
# sanitize), SANITIZE_EXTRA (more compute-sanitizer options).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
CS=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || ls -d /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | sort -V | tail -n 1)}
if [ -z "${CS}" ] || [ ! -x "${CS}" ]; then
    echo "sanitize.sh: compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2
    exit 2
fi
OUT=${SANITIZE_OUT:-${TMPDIR:-/tmp}/custom_norm_sanitize}
TIMEOUT=${SANITIZE_TIMEOUT:-300}
TOOLS=${SANITIZE_TOOLS:-memcheck racecheck}
PARTS=${SANITIZE_PARTS:-fwd bwd}
DRIVER_ARGS=()
[ "${SANITIZE_QUICK:-0}" = 1 ] && DRIVER_ARGS+=(--quick)
mkdir -p "${OUT}"

# Each tensor its own cudaMalloc, so that memcheck knows the real bounds of every buffer.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1

HAS_BWD=$("${PYTHON}" -c 'import torch, custom_norm, importlib.util as u; print(int(hasattr(torch.ops.norm_gated, "bwd") and u.find_spec("custom_norm.kernels.backward") is not None))') || {
    echo "sanitize.sh: cannot import custom_norm with ${PYTHON}" >&2
    exit 2
}
echo "sanitize.sh: $("${CS}" --version | grep -i version | head -n 1) at ${CS}; backward kernels: $([ "${HAS_BWD}" = 1 ] && echo yes || echo no)"

# Compile every kernel once without the sanitizer (Triton caches them on disk), so the sanitized runs only
# launch; this also checks that the driver passes at all.
if ! "${PYTHON}" scripts/sanitize_driver.py --part all ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"} > "${OUT}/warmup.log" 2>&1; then
    echo "sanitize.sh: the driver fails without the sanitizer; see ${OUT}/warmup.log" >&2
    tail -n 20 "${OUT}/warmup.log" >&2
    exit 1
fi

# memcheck: pad every allocation, so that an overrun into a neighbouring buffer is caught too.
CS_HELP=$("${CS}" --help 2>&1)
MEMCHECK_OPTS=()
grep -q -- "--padding" <<< "${CS_HELP}" && MEMCHECK_OPTS+=(--padding 256)
RACECHECK_OPTS=()
grep -q -- "--racecheck-report" <<< "${CS_HELP}" && RACECHECK_OPTS+=(--racecheck-report all)

status=0
run() {  # run TOOL PART
    local tool=$1 part=$2 log="${OUT}/$1-$2.log" opts=() rc errors hazards start secs
    case "${tool}" in
        memcheck) opts=(${MEMCHECK_OPTS[@]+"${MEMCHECK_OPTS[@]}"}) ;;
        racecheck) opts=(${RACECHECK_OPTS[@]+"${RACECHECK_OPTS[@]}"}) ;;
    esac
    start=$(date +%s)
    # shellcheck disable=SC2086
    timeout "${TIMEOUT}" "${CS}" --tool "${tool}" --error-exitcode 3 --print-limit 100000 ${opts[@]+"${opts[@]}"} \
        ${SANITIZE_EXTRA:-} "${PYTHON}" scripts/sanitize_driver.py --part "${part}" ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"} \
        > "${log}" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "${log}" | tail -n 1 | grep -Eo '[0-9]+$')
    hazards=$(grep -Eo 'RACECHECK SUMMARY: .*' "${log}" | tail -n 1)
    # racecheck prints no ERROR SUMMARY (compute-sanitizer 2025.3): its errors are in its own summary
    [ -z "${errors}" ] && errors=$(grep -Eo '\(([0-9]+) errors' <<< "${hazards}" | grep -Eo '[0-9]+')
    driver=$(grep -E '^sanitize_driver:' "${log}" | tail -n 1)
    printf '%-9s %-3s: %s errors, exit %s, %ss%s  [%s]\n' "${tool}" "${part}" "${errors:-?}" "${rc}" "${secs}" \
        "${hazards:+, ${hazards}}" "${log}"
    [ -n "${driver}" ] && echo "              ${driver}"
    if [ "${rc}" = 124 ]; then
        echo "              timed out after ${TIMEOUT}s (SANITIZE_QUICK=1 or SANITIZE_TIMEOUT=...)"
    fi
    if [ "${rc}" != 0 ] || [ "${errors:-x}" != 0 ]; then
        status=1
        grep -m 5 -E '^========= (Invalid|Error|Race|.*hazard)' "${log}" | sed 's/^/              /'
        echo "              findings by kernel (first access of each report):"
        grep -A1 -E '^========= (Invalid|Error|Warning|Race|.*hazard)' "${log}" \
            | grep -Eo ' at [A-Za-z_][A-Za-z_0-9]*\+0x[0-9a-f]+' | sed -E 's/\+0x[0-9a-f]+//' | sort | uniq -c \
            | sed 's/^/              /'
    fi
}

wants() { [[ " ${PARTS} " == *" $1 "* ]]; }
for tool in ${TOOLS}; do
    case "${tool}" in
        racecheck)
            wants bwd && [ "${HAS_BWD}" = 1 ] && run racecheck bwd
            wants fwd && run racecheck fwd ;;
        *)
            wants fwd && run "${tool}" fwd
            wants bwd && [ "${HAS_BWD}" = 1 ] && run "${tool}" bwd ;;
    esac
done
if [ "${status}" = 0 ]; then
    echo "sanitize.sh: clean (logs in ${OUT})"
else
    echo "sanitize.sh: ERRORS (logs in ${OUT})"
fi
exit "${status}"
