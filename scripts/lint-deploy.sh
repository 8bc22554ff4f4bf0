#!/usr/bin/env bash
# Lints and validates deploy/ offline (deploy/k8s/validate.py says what is checked): Dockerfiles
# (hadolint, checkov), kustomize sources (yamllint), and every overlay rendered with kustomize
# (yamllint, strict Kubernetes schemas, checkov, cross-object semantics). CI runs it through ctest
# (tests/deploy). Self-contained: keeps its tools in .venv-deploy, made from
# scripts/requirements-deploy.txt on first use (a few minutes) and only checked afterwards.
#
#   scripts/lint-deploy.sh                      # everything, all overlays
#   scripts/lint-deploy.sh --bin-dir build      # also: the entrypoint's flags exist in --help
#   scripts/lint-deploy.sh --self-test          # every stage must reject a broken manifest
#   scripts/lint-deploy.sh --setup-only         # only prepare .venv-deploy
#   scripts/lint-deploy.sh cpu-demo --out DIR   # one overlay, keep the rendered YAML
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TPSERVE_DEPLOY_VENV:-.venv-deploy}
REQ=scripts/requirements-deploy.txt
PY=${PYTHON:-python3}

# Several ctest runs (other build folders) may share the tree: one of them builds the venv.
lock=${TMPDIR:-/tmp}/tpserve-venv-deploy-$(printf '%s' "$PWD/$VENV" | sha256sum | cut -c1-16).lock
(
  flock 9
  want=$(sha256sum "$REQ" | cut -d' ' -f1)
  stamp=$VENV/.requirements.sha
  if ! { [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
    echo "lint-deploy: preparing $VENV from $REQ"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    echo '*' >"$VENV/.gitignore"  # keep the venv out of git status (not in the top .gitignore)
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    echo "$want" >"$stamp"
  fi
) 9>"$lock"

if [ "${1:-}" = "--setup-only" ]; then
  echo "lint-deploy: $VENV ready"
  exit 0
fi
exec "$VENV/bin/python" deploy/k8s/validate.py "$@"
