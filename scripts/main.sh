#!/usr/bin/env bash
# The main job: set up, then run the example SLO suite on the local backend, on CUDA when
# present, otherwise on the CPU. The table prints at the end; the report lands in kts-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DEVICE=cpu
if .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
fi
exec .venv/bin/python -m pytest examples -p no:cacheprovider --kts-device "$DEVICE" \
    --kts-report kts-report "$@"
