#!/usr/bin/env bash
# The sharing environment a run records, on a real GPU: bash benchmarks/gpu/sharing_env.sh OUT [cuda|cpu]
#   1. what the tools print (raw): nvidia-smi compute-policy -l, the compute and MIG mode;
#   2. this machine's record (python -m pytest_kts.sharing_env, NVML and nvidia-smi);
#   3. a short kts run (fft next to a GEMM) with a report: the record each worker read, as
#      summary.json and results.md carry it.
# Runs from a source tree with the machine's python3 (no install). About a minute on a GPU.
set -uo pipefail
OUT=${1:?OUT folder}
DEVICE=${2:-cuda}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git -C "$ROOT" log --oneline -1 2>/dev/null)"
    echo "## nvidia-smi --query-gpu=name,uuid,driver_version,compute_mode,mig.mode.current"
    nvidia-smi --query-gpu=name,uuid,driver_version,compute_mode,mig.mode.current --format=csv 2>&1
    echo "## nvidia-smi compute-policy -l"
    nvidia-smi compute-policy -l 2>&1
    echo "## python3 -m pytest_kts.sharing_env --device $DEVICE"
    python3 -m pytest_kts.sharing_env --device "$DEVICE" 2>&1
} > "$OUT/sharing-env.txt" 2>&1
# On the CPU (to try the script without a GPU) the sizes shrink to what runs in seconds.
if [ "$DEVICE" = cuda ]; then SIZES=(2048 4096 200); else SIZES=(32 32 40); fi
(cd "$ROOT" && timeout 300 python3 -m pytest_kts.cli run --device "$DEVICE" \
    --tenant "fft:size=${SIZES[0]},sleep_ms=5" --tenant "matmul:size=${SIZES[1]},sleep_ms=20" \
    --iterations "${SIZES[2]}" --name sharing-env --report "$OUT/run" -q) > "$OUT/run.log" 2>&1
echo "kts run exit $?" >> "$OUT/run.log"
{
    echo "## summary.json scenarios[0].sharing_env"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['scenarios'][0]['sharing_env'], indent=2))" \
        "$OUT/run/summary.json" 2>&1
    echo "## results.md"
    grep "Sharing environment" "$OUT/run/results.md" 2>&1
} >> "$OUT/sharing-env.txt"
tar czf "$OUT/run.tgz" -C "$OUT" run && rm -rf "$OUT/run"
cat "$OUT/sharing-env.txt"
