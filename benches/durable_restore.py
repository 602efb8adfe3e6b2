#!/usr/bin/env python3
"""Restore cost of business_impact's durable state (docs/durable-state.md), with the release build.

Runs the bench's business pipeline with the journal on (harness scenario `business-durable`: benches/pipelines/
business.yaml + file_storage; snapshots every `snapshot_min_journal`, 16 MiB, of journal), sends --rate spans/s for
--seconds with the load generator, waits until the journal holds everything the connector consumed, SIGKILLs the
collector, starts it again on the same storage and reports: bytes written (journal records and snapshots) per
span, the snapshots, the file's size, the pending operations at the kill and after the restore, the restore time
(self-telemetry and spawn → /readyz), the restore time per million pending operations, and each snapshot's pause of
the connector (the copy of its state) and encoding (on its own thread): count, mean and max.

    python3 benches/durable_restore.py                       # 50,000 spans/s for 20 s (1 M spans)
    python3 benches/durable_restore.py --rate 100000 --seconds 30
"""

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

import harness as h


def ready(port, timeout=600.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if h.http("GET", "http://127.0.0.1:%d/readyz" % port)[0] == 200:
                return True
        except Exception:
            pass
        time.sleep(0.02)
    return False


def metric(port, name):
    return sum(v for k, v in h.scrape(port, name).items() if k.split("{")[0] == name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    sc = h.SCENARIOS["business-durable"]
    tmp = tempfile.mkdtemp(prefix="bench-restore-")
    ports = {k: h.free_port() for k in ("grpc", "http", "sink", "admin", "prom")}
    env = dict(os.environ, BENCH_OTLP_GRPC="127.0.0.1:%d" % ports["grpc"],
               BENCH_OTLP_HTTP="127.0.0.1:%d" % ports["http"], BENCH_SINK="127.0.0.1:%d" % ports["sink"],
               BENCH_ADMIN="127.0.0.1:%d" % ports["admin"], BENCH_PROM="127.0.0.1:%d" % ports["prom"],
               BENCH_GZIP_LEVEL="1")
    sink = h.start([h.LOADGEN, "sink", "--listen", "127.0.0.1:%d" % ports["sink"]], 0)
    log = open(os.path.join(tmp, "collector.log"), "a")
    coll = h.start(h.collector_cmd(sc, ports, tmp), 1, env=env, out=log, err=log)
    try:
        assert ready(ports["admin"]), "collector did not start (%s)" % tmp
        r = subprocess.run(["taskset", "-c", "0", h.LOADGEN, "--endpoint", "http://127.0.0.1:%d" % ports["grpc"],
                            "--rate", str(args.rate), "--duration", "%ss" % args.seconds,
                            "--batch-size", str(h.BATCH_SIZE)], capture_output=True, text=True,
                           timeout=args.seconds + 300)
        sent = json.loads(r.stdout.strip().splitlines()[-1])
        end = time.time() + 120
        while time.time() < end:
            consumed = metric(ports["admin"], "bizpilot_connector_consumed_spans_total")
            pending = metric(ports["admin"], "bizpilot_storage_journal_pending_records")
            if consumed >= sent["acknowledged_spans"] and pending == 0:
                break
            time.sleep(0.2)
        journal = metric(ports["admin"], "bizpilot_storage_journal_bytes_total")
        snapshots = metric(ports["admin"], "bizpilot_storage_journal_snapshots_total")
        snapshot_bytes = metric(ports["admin"], "bizpilot_connector_business_impact_snapshot_bytes")
        # The connector's pause per snapshot (the copy of its state) and the encoding on the snapshot's own thread.
        timing = {}
        for what in ("pause", ""):
            name = "bizpilot_connector_business_impact_snapshot_%sseconds" % (what + "_" if what else "")
            series = h.scrape(ports["admin"], name)
            total = sum(v for k, v in series.items() if k.split("{")[0] == name + "_sum")
            count = sum(v for k, v in series.items() if k.split("{")[0] == name + "_count")
            worst = max([v for k, v in series.items() if k.split("{")[0] == name and 'quantile="1"' in k] or [0])
            timing[what or "encode"] = {"count": int(count), "mean_ms": round(total / count * 1e3, 3) if count else None,
                                        "max_ms": round(worst * 1e3, 3)}
        time.sleep(16)  # the pending gauge is set at the metrics flush (every 15 s in business.yaml)
        pending_ops = metric(ports["admin"], "bizpilot_connector_business_impact_pending_spans")
        coll.send_signal(signal.SIGKILL)
        coll.wait()
        size = sum(os.path.getsize(os.path.join(tmp, "storage", f)) for f in os.listdir(os.path.join(tmp, "storage")))
        t0 = time.time()
        coll = h.start(h.collector_cmd(sc, ports, tmp), 1, env=env, out=log, err=log)
        assert ready(ports["admin"]), "collector did not restart (%s)" % tmp
        wall = time.time() - t0
        restore = metric(ports["admin"], "bizpilot_connector_business_impact_restore_seconds")
        tail = metric(ports["admin"], "bizpilot_connector_business_impact_restored_requests")
        print(json.dumps({
            "rate": args.rate, "seconds": args.seconds, "spans": int(consumed),
            "pending_operations_at_kill": int(pending_ops),
            "written_bytes": int(journal), "written_bytes_per_span": round(journal / max(consumed, 1), 1),
            "snapshots": int(snapshots), "last_snapshot_bytes": int(snapshot_bytes),
            "snapshot_pause": timing["pause"], "snapshot_encode": timing["encode"],
            "file_bytes": size, "file_bytes_per_span": round(size / max(consumed, 1), 1),
            "journal_tail_requests_replayed": int(tail),
            "restore_seconds": round(restore, 3), "spawn_to_ready_seconds": round(wall, 3),
            "restore_seconds_per_million_pending_operations":
                round(restore / pending_ops * 1e6, 3) if pending_ops > 0 else None,
        }))
    finally:
        h.stop(coll)
        h.stop(sink, 5)


if __name__ == "__main__":
    main()
