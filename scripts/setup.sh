#!/usr/bin/env bash
# Set up a virtual environment with pytest-kts and everything its tests need.
# Idempotent: a second run reuses .venv and installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Torch first, and only if absent: the CPU build of 2.13.0 lies on this machine's disk; an
# unpinned torch would pull a multi-GB CUDA build. A machine that has a torch keeps it.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
