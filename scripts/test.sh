#!/usr/bin/env bash
# The test job: set up, run the linters and the type checker, then the test suite (CPU only;
# GPU paths are covered by the committed reports under docs/results/).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# Each check runs even if one before it failed, so one CI run shows every problem.
failed=0
.venv/bin/python -m ruff check . || { echo "test.sh: ruff check failed (lint)" >&2; failed=1; }
.venv/bin/python -m ruff format --check . ||
    { echo "test.sh: ruff format --check failed (run: ruff format .)" >&2; failed=1; }
# mypy strict on pytest_kts/, as configured in pyproject.toml ([tool.mypy]).
.venv/bin/python -m mypy || { echo "test.sh: mypy failed (strict types on pytest_kts/)" >&2; failed=1; }
if [ "$failed" -ne 0 ]; then
    exit 1
fi
.venv/bin/python -m pytest tests -p no:cacheprovider -n 2 "$@"
status=$?
if [ "$status" -eq 5 ]; then
    # Exit 5: pytest collected no tests (for example a -k or -m that matches nothing).
    echo "pytest collected no tests: nothing ran, so nothing failed" >&2
    exit 0
fi
exit "$status"
