#!/usr/bin/env bash
# Set up (idempotent), lint, then run the test suite.
# Extra args go to pytest; when they name test files/dirs (tests/test_x.py,
# tests/test_x.py::test_y) only those run, else the whole tests/ directory.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
scripts/setup.sh
VENV="${CRANE_VENV:-/opt/crane-venv}"
echo "test: ruff check crane tests bench"
"$VENV/bin/ruff" check --no-cache crane tests bench
targets=(tests)
for a in "$@"; do
    if [[ $a != -* && -e ${a%%::*} ]]; then
        targets=()
        break
    fi
done
echo "test: pytest ${targets[*]} $*"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${targets[@]}" "$@"
