#!/usr/bin/env python3
"""What live-board viewers cost: bizpilot's CPU at a fixed span rate without and with N board viewers.

Runs the release binary with benches/pipelines/business.yaml (OTLP in, enrich, business_impact; the admin
server serves the board) pinned to core 1, and the load generator, its sink and the viewers on core 0. Each
round measures bizpilot's CPU (utime + stime from /proc) over a steady window at --rate spans/s, once with no
viewer and once with --viewers clients reading `GET /board/events` (server-sent events: one snapshot per
second, the same bytes for every viewer), alternating, --rounds times. Reports the medians and the difference
in percent of one core and relative to the run without viewers. Standard library only; reuses harness.py.

    python3 benches/board_viewers.py                      # 20 viewers at 50,000 spans/s, 3 rounds
    python3 benches/board_viewers.py --viewers 20 --rate 50000 --seconds 20 --rounds 5 --no-build
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (the load harness: build, ports, sampling, pinning)


class Viewer(threading.Thread):
    """One board viewer: reads the event stream and counts ticks and bytes."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop, self.ticks, self.bytes, self.error = port, stop, 0, 0, None

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("GET", "/board/events", headers={"Accept": "text/event-stream"})
            r = c.getresponse()
            while not self.stop.is_set():
                line = r.fp.readline()
                if not line:
                    break
                self.bytes += len(line)
                if line.startswith(b"event: tick"):
                    self.ticks += 1
            c.close()
        except Exception as e:  # reported in the result
            self.error = repr(e)


def measure(pid, grpc, rate, seconds, warmup):
    """bizpilot's CPU (share of one core) over the steady window of a fixed-rate run, and the achieved rate."""
    sampler = harness.Sampler(pid)
    sampler.start()
    s, ticks = harness.loadgen(grpc, seconds, ["--rate", str(rate), "--connections", "2", "--inflight", "8",
                                               "--max-retries", "3"], True, stamp=False)
    sampler.stop.set()
    w = harness.steady(ticks, sampler, warmup, 1.0)
    return {"cpu": w["cpu_utilisation"], "spans_per_sec": w["spans_per_sec"], "refused": s["refused"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=16)
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bin-dir", help="where bizpilot and bizpilot-loadgen are (default: target/release, built)")
    args = ap.parse_args()
    if args.bin_dir:
        harness.BIZPILOT = os.path.join(args.bin_dir, "bizpilot")
        harness.LOADGEN = os.path.join(args.bin_dir, "bizpilot-loadgen")
    elif not args.no_build:
        harness.build()
    os.sched_setaffinity(0, {0})  # the viewers share core 0 with the generator, not bizpilot's core
    tmp = tempfile.mkdtemp(prefix="bench-board-")
    ports = {k: harness.free_port() for k in ("grpc", "http", "sink", "admin", "prom")}
    env = dict(os.environ, BENCH_OTLP_GRPC="127.0.0.1:%d" % ports["grpc"],
               BENCH_OTLP_HTTP="127.0.0.1:%d" % ports["http"], BENCH_SINK="127.0.0.1:%d" % ports["sink"],
               BENCH_ADMIN="127.0.0.1:%d" % ports["admin"], BENCH_PROM="127.0.0.1:%d" % ports["prom"],
               BENCH_GZIP_LEVEL="1")
    sink = harness.start([harness.LOADGEN, "sink", "--listen", "127.0.0.1:%d" % ports["sink"]], 0)
    log = open(os.path.join(tmp, "bizpilot.log"), "w")
    coll = harness.start([harness.BIZPILOT, "run", "--config", os.path.join(harness.PIPELINES, "business.yaml")],
                         1, env=env, out=log, err=log)
    grpc = "127.0.0.1:%d" % ports["grpc"]
    rounds = []
    try:
        if not (harness.wait_port(ports["sink"]) and harness.wait_port(ports["grpc"])
                and harness.wait_port(ports["admin"])):
            raise RuntimeError("bizpilot or the sink did not start (see %s)" % tmp)
        time.sleep(1)
        for i in range(args.rounds):
            without = measure(coll.pid, grpc, args.rate, args.seconds, args.warmup)
            stop = threading.Event()
            viewers = [Viewer(ports["admin"], stop) for _ in range(args.viewers)]
            for v in viewers:
                v.start()
            time.sleep(2)
            t0 = time.time()
            with_v = measure(coll.pid, grpc, args.rate, args.seconds, args.warmup)
            elapsed = time.time() - t0
            stop.set()
            errors = [v.error for v in viewers if v.error]
            ticks = [v.ticks for v in viewers]
            rounds.append({"without": without, "with": with_v, "viewer_errors": errors,
                           "ticks_per_viewer_per_sec": round(statistics.median(ticks) / elapsed, 2),
                           "bytes_per_viewer_per_sec": round(statistics.median([v.bytes for v in viewers]) / elapsed)})
            harness.log("round %d: without %.3f core, with %d viewers %.3f core (%.2f ticks/s per viewer)"
                        % (i + 1, without["cpu"], args.viewers, with_v["cpu"], rounds[-1]["ticks_per_viewer_per_sec"]))
            time.sleep(3)  # the viewers' connections close
    finally:
        harness.stop(coll)
        harness.stop(sink)
    a = statistics.median(r["without"]["cpu"] for r in rounds)
    b = statistics.median(r["with"]["cpu"] for r in rounds)
    result = {
        "viewers": args.viewers, "rate": args.rate, "rounds": rounds, "machine": harness.machine(),
        "cpu_without": round(a, 4), "cpu_with": round(b, 4),
        "added_percent_of_a_core": round((b - a) * 100, 2),
        "added_percent_relative": round((b - a) / a * 100, 2) if a else None,
    }
    os.makedirs(harness.RESULTS, exist_ok=True)
    with open(os.path.join(harness.RESULTS, "board_viewers.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    print("%d viewers at %d spans/s: bizpilot %.1f %% of a core without, %.1f %% with: %+.2f points (%+.1f %% relative)"
          % (args.viewers, args.rate, a * 100, b * 100, (b - a) * 100, result["added_percent_relative"] or 0))


if __name__ == "__main__":
    main()
