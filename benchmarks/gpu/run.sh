#!/usr/bin/env bash
# The GPU evidence, one part per call: bash benchmarks/gpu/run.sh OUT decisive|main|explain|startup
#   decisive: benchmarks/gpu/test_decisive.py and test_attribution.py with a report, then the
#             fixed-cost benchmark;
#   main:     the main job's example suite on CUDA (what scripts/main.sh runs), with a report,
#             then the sharing environment a run records (sharing_env.sh; SKIP_SHARING=1 skips
#             it; MAIN_K: a pytest -k expression to run some of the suite);
#   explain:  benchmarks/gpu/test_explain.py with a report: who took the tail by leaving each
#             co-tenant out, eight tenants, and how many batch GEMMs a router tolerates
#             (EXPLAIN_K: a pytest -k expression to run some of them);
#   startup:  the fixed cost per test (same tenants, and tenants that all differ) and how fast
#             a new tenant spec gets a worker (fresh process, fork server, resident reload).
# Runs from a source tree with the machine's python3 (no install): the plugin is named with -p.
# Every output lands under OUT; report folders are packed as .tgz (the device tool returns
# at most 8 files).
set -uo pipefail
OUT=${1:?OUT folder}
PART=${2:?decisive, main, explain or startup}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    date -u
    git -C "$ROOT" log --oneline -1 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch; print('torch', torch.__version__)"
} > "$OUT/machine-$PART.txt" 2>&1
case "$PART" in
decisive)
    (cd "$ROOT/benchmarks/gpu" && timeout 420 python3 -m pytest -p pytest_kts.plugin \
        test_decisive.py test_attribution.py --kts-device cuda --kts-report "$OUT/decisive" \
        -v -rA -p no:cacheprovider --durations=0) > "$OUT/decisive.log" 2>&1
    echo "pytest exit $?" >> "$OUT/decisive.log"
    tar czf "$OUT/decisive.tgz" -C "$OUT" decisive && rm -rf "$OUT/decisive"
    timeout 240 python3 "$ROOT/benchmarks/fixed_cost.py" --out "$OUT" --device cuda --tests 6 \
        > "$OUT/fixed_cost.log" 2>&1
    ;;
startup)
    timeout 240 python3 "$ROOT/benchmarks/fixed_cost.py" --out "$OUT" --device cuda --tests 8 \
        > "$OUT/fixed_cost.log" 2>&1
    echo "fixed_cost exit $?" >> "$OUT/fixed_cost.log"
    timeout 180 python3 "$ROOT/benchmarks/worker_start.py" --out "$OUT" --device cuda \
        --repeats 5 > "$OUT/worker_start.log" 2>&1
    echo "worker_start exit $?" >> "$OUT/worker_start.log"
    ;;
main)
    start=$(date +%s)
    (cd "$ROOT" && timeout ${MAIN_TIMEOUT:-400} python3 -m pytest examples -p pytest_kts.plugin -p no:cacheprovider \
        ${MAIN_K:+-k "$MAIN_K"} --kts-device cuda --kts-report "$OUT/main" -rA --durations=0) > "$OUT/main.log" 2>&1
    echo "pytest exit $? after $(($(date +%s) - start)) s" >> "$OUT/main.log"
    tar czf "$OUT/main.tgz" -C "$OUT" main && rm -rf "$OUT/main"
    if [ -z "${SKIP_SHARING:-}" ]; then
        timeout 150 bash "$ROOT/benchmarks/gpu/sharing_env.sh" "$OUT/sharing" cuda > /dev/null 2>&1
        echo "sharing_env exit $?" >> "$OUT/main.log"
        (cd "$OUT" && tar czf sharing.tgz sharing && rm -rf sharing)
    fi
    ;;
explain)
    (cd "$ROOT/benchmarks/gpu" && timeout ${EXPLAIN_TIMEOUT:-420} python3 -m pytest -p pytest_kts.plugin \
        test_explain.py ${EXPLAIN_K:+-k "$EXPLAIN_K"} --kts-device cuda --kts-report "$OUT/explain" -v -s -rA \
        -p no:cacheprovider --durations=0) > "$OUT/explain.log" 2>&1
    echo "pytest exit $?" >> "$OUT/explain.log"
    tar czf "$OUT/explain.tgz" -C "$OUT" explain && rm -rf "$OUT/explain"
    ;;
esac
echo "workers left: $(pgrep -fc 'pytest_kts.workers' || true)" >> "$OUT/machine-$PART.txt"
grep -E "passed|failed|error" "$OUT"/*.log | tail -5
