#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ (deploy/*.yaml and deploy/examples/*.yaml)
# against the Kubernetes OpenAPI schemas, strictly (unknown fields are errors), with the PyPI
# package kubernetes-validate, and checks that every ConfigMap binaryData value is base64 (the
# schemas do not). Prints each object checked; exits 1 if any fails.
#
#   scripts/validate-deploy.sh                  validate for Kubernetes 1.30.0
#   K8S_VERSION=1.33.0 scripts/validate-deploy.sh
#   scripts/validate-deploy.sh FILE.yaml...     validate these files instead
#
# kubernetes-validate is installed once into target/validate-venv (python3 -m venv; on Debian
# python3-venv is installed with apt if missing, as root or with sudo). Later runs reuse it
# and take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0                     # kubernetes-validate on PyPI; ships schemas 1.25-1.37
K8S_VERSION=${K8S_VERSION:-1.30.0}
venv=target/validate-venv

case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
esac

installed() {
  [ -x "$venv/bin/kubernetes-validate" ] \
    && [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KV_VERSION" ]
}

if ! installed; then
  echo "== installing kubernetes-validate $KV_VERSION into $venv"
  rm -rf "$venv"
  mkdir -p target
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 has venv but not ensurepip without python3-venv.
    rm -rf "$venv"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  installed || { echo "validate-deploy.sh: kubernetes-validate $KV_VERSION did not install" >&2; exit 1; }
fi

if [ $# -gt 0 ]; then
  files=("$@")
else
  files=(deploy/*.yaml deploy/examples/*.yaml)
fi

echo "== kubernetes-validate $KV_VERSION, Kubernetes $K8S_VERSION, strict: ${#files[@]} files"
status=0
"$venv/bin/kubernetes-validate" -k "$K8S_VERSION" --strict "${files[@]}" || status=1

echo "== ConfigMap binaryData is base64"
"$venv/bin/python" - "${files[@]}" <<'EOF' || status=1
import base64, binascii, sys, yaml
bad = 0
for path in sys.argv[1:]:
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "ConfigMap":
            continue
        name = doc.get("metadata", {}).get("name")
        for key, value in (doc.get("binaryData") or {}).items():
            try:
                size = len(base64.b64decode(str(value), validate=True))
                print(f"INFO {path} configmap/{name} binaryData {key}: {size} bytes")
            except binascii.Error as e:
                print(f"ERROR {path} configmap/{name} binaryData {key}: not base64 ({e})")
                bad += 1
sys.exit(1 if bad else 0)
EOF

if [ "$status" -eq 0 ]; then
  echo "== all valid"
else
  echo "== validation failed" >&2
fi
exit "$status"
