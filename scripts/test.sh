#!/usr/bin/env bash
# Set up (idempotent), lint, then run the test suite. Extra args go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
scripts/setup.sh
VENV="${CRANE_VENV:-/opt/crane-venv}"
echo "test: ruff check crane tests bench"
"$VENV/bin/ruff" check --no-cache crane tests bench
echo "test: pytest $*"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
