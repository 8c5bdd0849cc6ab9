#!/usr/bin/env bash
# Generates the Python gRPC stubs (with .pyi) from proto/ into services/common/_generated.
set -euo pipefail
cd "$(dirname "$0")/.."
out=services/common/_generated
tmp=$(mktemp -d "$out.tmp.XXXX")
"${PYTHON:-.venv/bin/python}" -m grpc_tools.protoc -I proto \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  $(find proto -name '*.proto' | sort)
for d in $(cd "$tmp" && find . -type d); do touch "$tmp/$d/__init__.py"; done
rm -rf "$out" && mv "$tmp" "$out"
echo "==> generated stubs in $out"
