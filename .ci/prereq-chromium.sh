#!/usr/bin/env bash
# Prerequisite of the live board's browser tests: a real headless Chromium (Debian package
# `chromium`), driven through the DevTools protocol. Safe to run again (it skips what is there).
set -euo pipefail
for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1; then
    echo "chromium: $("$bin" --version 2>/dev/null | head -n 1)"
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
echo "installing chromium (Debian package)"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium installed in $(( $(date +%s) - start ))s: $(chromium --version 2>/dev/null | head -n 1)"
