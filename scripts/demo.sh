#!/usr/bin/env bash
# Sets up .venv if needed (scripts/setup.sh), then runs `opsagent demo` on the embedded model.
# Extra arguments go to the demo, e.g. `bash scripts/demo.sh --cases 40`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/opsagent demo "$@"
