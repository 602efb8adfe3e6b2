#!/usr/bin/env bash
# Prerequisite of the business-impact end-to-end tests (tests/impact_prometheus.rs): a real Prometheus
# server and promtool (Debian package `prometheus`). The tests start their own server on a free port,
# so any service the package starts is stopped again.
set -euo pipefail
if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus
# The package may start (and enable) a system service listening on :9090: the tests do not use it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl stop prometheus.service 2>/dev/null || true
  $SUDO systemctl disable prometheus.service 2>/dev/null || true
elif command -v service >/dev/null 2>&1; then
  $SUDO service prometheus stop 2>/dev/null || true
fi
/usr/bin/prometheus --version | head -n 1
