#!/usr/bin/env bash
# Test prerequisites of the Kafka components (crates/kafka, tests/kafka_e2e.rs), run by .ci/run
# before the tests; safe to run again (it skips what is there).
#
# - The C build dependencies of librdkafka, which rdkafka-sys compiles from source with its
#   configure script (no cmake needed): a C compiler, make, pkg-config, OpenSSL and zlib
#   headers. The Rust machine image has them; they are installed with apt-get when missing.
# - tansu, a Kafka-protocol broker written in Rust, from crates.io: the tests start it on a free
#   loopback port with in-memory storage. Installed into ~/.cargo/bin (or $CARGO_HOME/bin).
#   A debug build: it compiles in about half the time of a release build and is fast enough for
#   the tests' few thousand messages.
set -euo pipefail

TANSU_VERSION=0.6.0

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
pkg-config --exists zlib 2>/dev/null || missing+=(zlib1g-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing librdkafka build dependencies: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: librdkafka build dependencies missing (${missing[*]}); install them to build bizpilot-kafka" >&2
  fi
fi

bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
tansu="$(command -v tansu || true)"
if [ -z "$tansu" ] && [ -x "$bin_dir/tansu" ]; then
  tansu="$bin_dir/tansu"
fi
if [ -n "$tansu" ] && "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "tansu: $("$tansu" --version 2>&1 | head -n 1) ($tansu)"
  exit 0
fi

echo "installing tansu $TANSU_VERSION (cargo install --debug --features dynostore; takes a while)"
start=$(date +%s)
cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --debug --quiet
echo "tansu installed in $(( $(date +%s) - start ))s: $("$bin_dir/tansu" --version 2>&1 | head -n 1)"
