#!/usr/bin/env bash
# Where the time goes: runs one benchmark scenario (benches/pipelines/<scenario>.yaml) at the maximum rate with
# bizpilot pinned to core 1 and the generator + sink on core 0, samples bizpilot with `perf record -e cpu-clock`
# (software clock: works where hardware counters do not), and prints the hottest symbols and libraries.
#
#   benches/profile.sh forward [seconds]      # or business, ingest, decode
#
# Needs the release binaries (cargo build --release -p bizpilot -p bizpilot-loadgen) and perf.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-forward}
secs=${2:-12}
logs_flag=--no-logs
case $scenario in business | ingest) logs_flag= ;; esac
out=benches/results/profile-$scenario
mkdir -p "$out"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export BENCH_OTLP_GRPC=127.0.0.1:$(port) BENCH_OTLP_HTTP=127.0.0.1:$(port) BENCH_SINK=127.0.0.1:$(port)
export BENCH_ADMIN=127.0.0.1:$(port) BENCH_PROM=127.0.0.1:$(port) BENCH_GZIP_LEVEL=${BENCH_GZIP_LEVEL:-1}

taskset -c 0 target/release/bizpilot-loadgen sink --listen "$BENCH_SINK" >"$out/sink.json" 2>/dev/null &
sink=$!
taskset -c 1 target/release/bizpilot run --config "benches/pipelines/$scenario.yaml" >"$out/bizpilot.log" 2>&1 &
collector=$!
cleanup() { kill -TERM "$collector" "$sink" 2>/dev/null || true; wait "$collector" "$sink" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/${BENCH_OTLP_GRPC%:*}/${BENCH_OTLP_GRPC#*:}") 2>/dev/null && break
  sleep 0.1
done
taskset -c 0 target/release/bizpilot-loadgen --endpoint "http://$BENCH_OTLP_GRPC" --duration "${secs}s" \
  --connections 2 --inflight 4 --stamp-every 0 $logs_flag >"$out/loadgen.json" 2>/dev/null &
gen=$!
sleep 3
perf record -F 999 -e cpu-clock -p "$collector" -o "$out/perf.data" -- sleep $((secs - 5)) 2>/dev/null
wait "$gen"
echo "loadgen: $(cat "$out/loadgen.json")"
echo
echo "== libraries (share of samples)"
perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo
echo "== hottest symbols"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
