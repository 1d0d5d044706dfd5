#!/usr/bin/env bash
# Sets up .venv if needed (scripts/setup.sh), then runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not engine"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
