#!/usr/bin/env bash
# Time our op at an earlier revision and at the working tree, alternating on one card (kernel changes A/B).
#   here:      bash scripts/ab_revisions.sh prepare REV    # REV's files into .ab_base/ (git-ignored)
#   GPU:       bash scripts/ab_revisions.sh run [ROUNDS]   # device tool: carry [".whl", ".ab_base"]
# Each round runs scripts/bench.py --providers ours --no-sweep once from .ab_base/ and once from here, and
# prints one line per side: case and CUDA-graph µs. Peers are not timed (bench.py does that). AB_CASES (bench.py
# case names, comma-separated) times only those cases.
set -u
case "${1:-}" in
prepare)
    rev=${2:?usage: ab_revisions.sh prepare REV}
    rm -rf .ab_base && mkdir .ab_base && git archive "$rev" | tar -x -C .ab_base
    git rev-parse --short "$rev" >.ab_base/REVISION
    echo ".ab_base/: $(git rev-parse --short "$rev")"
    ;;
run)
    [ -d .ab_base ] || { echo "no .ab_base/: run 'prepare REV' first and carry it" >&2; exit 2; }
    out=${OUT:-/tmp/ab_revisions}
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1  # bench.py puts its own checkout first on sys.path
    base_label="base $(cat .ab_base/REVISION)"
    for round in $(seq "${2:-2}"); do
        for side in base here; do
            if [ "$side" = base ]; then dir=.ab_base label=$base_label; else dir=. label="working tree"; fi
            (cd "$dir" && timeout 150 python3 scripts/bench.py --providers ours --no-sweep --out "$out/$side$round" \
                --time-limit 120 ${AB_CASES:+--cases "$AB_CASES"} >"$out/$side$round.log" 2>&1)
            echo "$label, round $round:" \
                "$(grep -E '^\| [a-z0-9_]+ \| ours \|' "$out/$side$round.log" | awk -F'|' '{printf "%s%s;", $2, $4}')"
        done
    done
    ;;
*)
    echo "usage: bash scripts/ab_revisions.sh prepare REV | run [ROUNDS]" >&2
    exit 2
    ;;
esac
