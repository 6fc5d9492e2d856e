#!/usr/bin/env bash
# Time our op at earlier revisions and at the working tree, alternating on one card (kernel changes A/B).
#   here:      bash scripts/ab_revisions.sh prepare REV [DIR]  # REV's files into DIR (default .ab_base/; git-ignored:
#                                                             # name it .ab_*)
#   GPU:       bash scripts/ab_revisions.sh run [ROUNDS]   # device tool: carry [".whl", ".ab_base", ...]
# Each round runs scripts/bench.py --providers ours --no-sweep once from .ab_base/, once from each directory in
# AB_SIDES (space-separated, e.g. another revision or a variant prepared and then edited) and once from here, and
# prints one line per side: case and CUDA-graph µs. Peers are not timed (bench.py does that). AB_CASES (bench.py
# case names, comma-separated) times only those cases; AB_ARGS adds bench.py arguments (e.g. --suite models).
set -u
case "${1:-}" in
prepare)
    rev=${2:?usage: ab_revisions.sh prepare REV [DIR]}
    dir=${3:-.ab_base}
    rm -rf "$dir" && mkdir "$dir" && git archive "$rev" | tar -x -C "$dir"
    git rev-parse --short "$rev" >"$dir/REVISION"
    echo "$dir/: $(git rev-parse --short "$rev")"
    ;;
run)
    [ -d .ab_base ] || { echo "no .ab_base/: run 'prepare REV' first and carry it" >&2; exit 2; }
    out=${OUT:-/tmp/ab_revisions}
    mkdir -p "$out"
    if [ -z "${GPU_CHECK_INSTALLED:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then  # gpu_check.sh installed them
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1  # bench.py puts its own checkout first on sys.path
    for round in $(seq "${2:-2}"); do
        for dir in .ab_base ${AB_SIDES:-} .; do
            if [ "$dir" = . ]; then label="working tree" side=here; else label="$dir $(cat "$dir/REVISION")" side=$dir; fi
            (cd "$dir" && timeout 150 python3 scripts/bench.py --providers ours --no-sweep --out "$out/$side$round" \
                --time-limit 120 ${AB_CASES:+--cases "$AB_CASES"} ${AB_ARGS:-} >"$out/$side$round.log" 2>&1)
            echo "$label, round $round:" \
                "$(grep -E '^\| [a-z0-9_.-]+ \| ours \|' "$out/$side$round.log" | awk -F'|' '{printf "%s%s;", $2, $4}')"
        done
    done
    ;;
*)
    echo "usage: bash scripts/ab_revisions.sh prepare REV | run [ROUNDS]" >&2
    exit 2
    ;;
esac
