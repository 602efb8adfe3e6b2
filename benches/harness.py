#!/usr/bin/env python3
"""End-to-end load harness for bizpilot (standard library only).

Builds the release binaries, then for each scenario runs the collector pinned to one core (taskset -c 1) and
the load generator and its sink on the other (taskset -c 0), and measures:

  * the maximum sustained spans/s (generator at maximum rate with bounded in-flight requests, so the collector's
    backpressure sets the pace; steady window = after the warm-up, before the cool-down; refusals counted),
  * CPU-seconds per million spans over the same window (utime + stime from /proc/<pid>/stat),
  * peak RSS (VmHWM from /proc/<pid>/status),
  * p50/p99 added latency at a fixed rate (default 50,000 spans/s), measured by the sink from the generator's
    send stamps,
  * overload at 5x the sustained rate, offered open loop (every request leaves at its scheduled time whether or
    not earlier ones were answered, at most --overload-inflight in flight): peak RSS against the memory limiter's
    bound, the refusals, and whether every refusal was retryable (gRPC UNAVAILABLE / RESOURCE_EXHAUSTED) and
    nothing failed otherwise.

--memory runs the embedded default pipeline (`bizpilot run` without --config, pipelines/opentelemetry-demo.yaml)
instead: a fresh collector per rate (--memory-rates, default 50,000 and 400,000 spans/s) for --memory-duration
seconds each, its RSS sampled every second (peak, trajectory), its CPU-s per million spans, and the business_impact
connector's pending operations from its self-telemetry; then 5x its maximum rate, open loop. The generator sends
fresh trace and span ids on every lap of its ring, as real traffic has, and (--realtime) a workload whose event
time advances as fast as the wall clock, so the connector holds `allowed_lateness` worth of operations.

Scenarios (configs in benches/pipelines/): forward (gzip 1, and gzip 6), business, ingest, the decode-only
ceiling, and Rotel (pip package `rotel`, pinned) forwarding with gzip to the same sink.
Each figure is the median of --runs runs. Results: a markdown table and JSON in benches/results/ (gitignored),
with PASS/MISS per target.

    python3 benches/harness.py                 # everything, 3 runs each
    python3 benches/harness.py --quick         # 1 short run each (checks the harness works)
    python3 benches/harness.py --scenarios forward,rotel --runs 3 --wait-quiet 600
    python3 benches/harness.py --memory --memory-duration 600   # the default pipeline's memory, 10 min per rate
"""

import argparse
import datetime
import json
import re
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
PIPELINES = os.path.join(ROOT, "benches", "pipelines")
BIZPILOT = os.path.join(ROOT, "target", "release", "bizpilot")
LOADGEN = os.path.join(ROOT, "target", "release", "bizpilot-loadgen")
ROTEL_VERSION = "0.0.1a15"  # ships rotel-agent 0.0.1-alpha10, the build the performance notes measured
ROTEL_DIR = os.path.join(ROOT, "target", "bench-tools", "rotel-" + ROTEL_VERSION)
HZ = os.sysconf("SC_CLK_TCK")
BATCH_SIZE = 512  # spans per request (--batch-size)
MIB = 1024 * 1024

# Targets (from the issue "Load harness and benchmarks").
ROTEL_REFERENCE = 58_000  # spans/s, used when Rotel is not run
LATENCY_TARGET_MS = 5.0
FORWARD_RSS_MIB = 50
INGEST_TARGET = 500_000

SCENARIOS = {
    "forward": dict(
        label="(a) forward: OTLP in, batch, OTLP/gRPC out, gzip 1",
        collector="bizpilot", config="forward.yaml", gzip=1, logs=False, otlp_out=True,
        phases=("max", "latency", "overload"),
    ),
    "forward-gzip6": dict(
        label="(a') forward, gzip 6",
        collector="bizpilot", config="forward.yaml", gzip=6, logs=False, otlp_out=True, phases=("max",),
    ),
    "business": dict(
        label="(b) business: OTLP in, enrich (demo preset), business_impact, Prometheus + OTLP out",
        collector="bizpilot", config="business.yaml", gzip=1, logs=True, otlp_out=True,
        phases=("max", "latency", "overload"),
    ),
    "business-durable": dict(
        label="(b') business with durable state: (b), business_impact journaled to file_storage (group commit 200 ms)",
        collector="bizpilot", config="business.yaml", gzip=1, logs=True, otlp_out=True,
        phases=("max", "latency"),
        # Merged over the config (docs/durable-state.md): a redb file in the run's temporary directory.
        overlay="extensions:\n  file_storage: {directory: %(tmp)s/storage}\n"
                "connectors:\n  business_impact: {storage: file_storage, checkpoint_interval: 200ms}\n"
                "service:\n  extensions: [business_state, file_storage]\n",
    ),
    "ingest": dict(
        label="(c) ingest: OTLP in, enrich (demo preset), business_impact, Prometheus only",
        collector="bizpilot", config="ingest.yaml", gzip=1, logs=True, otlp_out=False,
        phases=("max", "latency", "overload"),
    ),
    "decode": dict(
        label="decode-only ceiling: OTLP receiver (validating walk) into a counting exporter",
        collector="bizpilot", config="decode.yaml", gzip=1, logs=False, otlp_out=False, phases=("max",),
    ),
    "rotel": dict(
        label="Rotel %s forward: OTLP in, batch, OTLP/gRPC out, gzip (its fixed level)" % ROTEL_VERSION,
        collector="rotel", config=None, gzip=None, logs=False, otlp_out=True, phases=("max", "latency"),
    ),
}
ORDER = ["rotel", "forward", "forward-gzip6", "business", "business-durable", "ingest", "decode"]


def log(msg):
    print("[harness %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def http(method, url, timeout=5.0):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def collector_pid(root, exe, timeout=10.0):
    """The pid of the process running `exe` in `root`'s process tree (`root` itself, or the collector a wrapper
    such as heaptrack started); `root` when none appears within `timeout`."""
    want = os.path.realpath(exe)
    deadline = time.time() + timeout
    while True:
        children = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
        todo = [root]
        while todo:
            pid = todo.pop()
            try:
                if os.path.realpath("/proc/%d/exe" % pid) == want:
                    return pid
            except OSError:
                pass
            todo.extend(children.get(pid, []))
        if time.time() >= deadline:
            return root
        time.sleep(0.1)


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Samples a process's CPU ticks every 0.2 s (wall time, ticks)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append((time.time(), cpu_ticks(self.pid)))
            except OSError:
                return
            self.stop.wait(0.2)

    def ticks_at(self, t):
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return float(s[0][1])
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return float(s[-1][1])


def start(cmd, cpu, env=None, out=None, err=None):
    return subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, env=env, stdout=out or subprocess.DEVNULL,
                            stderr=err or subprocess.DEVNULL, start_new_session=True)


def stop(p, timeout=40.0):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def build():
    log("cargo build --release -p bizpilot -p bizpilot-loadgen")
    subprocess.run(["cargo", "build", "--release", "-p", "bizpilot", "-p", "bizpilot-loadgen"], cwd=ROOT,
                   check=True)


def rotel_binary():
    """Returns (path, None) or (None, why not). Installs the pinned wheel's binary under target/bench-tools."""
    exe = os.path.join(ROTEL_DIR, "rotel", "rotel-agent")
    if os.path.exists(exe):
        return exe, None
    tmp = tempfile.mkdtemp(prefix="rotel-")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
           "--platform", "manylinux_2_34_x86_64", "-d", tmp, "rotel==" + ROTEL_VERSION]
    log(" ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if r.returncode != 0 or not wheels:
        return None, "pip download rotel==%s failed: %s" % (ROTEL_VERSION, (r.stderr or r.stdout).strip()[-300:])
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
        z.extract("rotel/rotel-agent", ROTEL_DIR)
    os.chmod(exe, 0o755)
    return exe, None


def loadgen(endpoint, seconds, extra, logs, stamp=True):
    """Runs the generator on core 0; returns (summary, ticks)."""
    cmd = [LOADGEN, "--endpoint", "http://" + endpoint, "--duration", "%ss" % seconds, "--stats-interval", "0.5s"]
    if not logs:
        cmd.append("--no-logs")
    if not stamp:
        cmd += ["--stamp-every", "0"]
    cmd += ["--batch-size", str(BATCH_SIZE)] + extra
    r = subprocess.run(["taskset", "-c", "0"] + cmd, capture_output=True, text=True, timeout=seconds + 180)
    if r.returncode != 0:
        raise RuntimeError("loadgen failed: %s" % r.stderr[-500:])
    ticks = [json.loads(l) for l in r.stderr.splitlines() if l.startswith("{")]
    return json.loads(r.stdout.strip().splitlines()[-1]), ticks


def steady(ticks, sampler, warmup, cooldown):
    """Rate, refusals and CPU over the steady window of a run."""
    if not ticks:
        return None
    end = ticks[-1]["t"] - cooldown
    win = [t for t in ticks if warmup <= t["t"] <= end]
    if len(win) < 2:
        win = ticks[len(ticks) // 3:]
    if len(win) < 2:
        return None
    a, b = win[0], win[-1]
    dt = (b["unix_ms"] - a["unix_ms"]) / 1000.0
    spans = b["acknowledged_spans"] - a["acknowledged_spans"]
    cpu = (sampler.ticks_at(b["unix_ms"] / 1000.0) - sampler.ticks_at(a["unix_ms"] / 1000.0)) / HZ
    return {
        "window_s": round(dt, 2),
        "spans_per_sec": round(spans / dt) if dt > 0 else 0,
        "refused_in_window": b["refused"] - a["refused"],
        "errors_in_window": b["errors"] - a["errors"],
        "cpu_s": round(cpu, 3),
        "cpu_s_per_million_spans": round(cpu / (spans / 1e6), 2) if spans else None,
        "cpu_utilisation": round(cpu / dt, 2) if dt > 0 else None,
        "spans_per_cpu_second": round(spans / cpu) if cpu > 0 else None,
    }


def collector_cmd(sc, ports, tmp):
    if sc["collector"] == "rotel":
        return [ROTEL_EXE, "start", "--otlp-grpc-endpoint", "127.0.0.1:%d" % ports["grpc"],
                "--otlp-http-endpoint", "127.0.0.1:%d" % ports["http"], "--exporter", "otlp",
                "--otlp-exporter-endpoint", "http://127.0.0.1:%d" % ports["sink"],
                "--otlp-exporter-compression", "gzip", "--pid-file", os.path.join(tmp, "rotel.pid"),
                "--log-file", os.path.join(tmp, "rotel.log")]
    cmd = [BIZPILOT, "run", "--config", os.path.join(PIPELINES, sc["config"])]
    if sc.get("overlay"):
        path = os.path.join(tmp, "overlay.yaml")
        with open(path, "w") as f:
            f.write(sc["overlay"] % {"tmp": tmp})
        cmd += ["--config", path]
    return cmd


def limiter_mib(sc):
    """memory_limiter.limit_mib of the scenario's config, if any."""
    if not sc["config"]:
        return None
    with open(os.path.join(PIPELINES, sc["config"])) as f:
        m = re.search(r"limit_mib:\s*(\d+)", f.read())
    return int(m.group(1)) if m else None


def one_run(name, sc, args):
    tmp = tempfile.mkdtemp(prefix="bench-%s-" % name)
    ports = {k: free_port() for k in ("grpc", "http", "sink", "admin", "prom")}
    env = dict(os.environ, BENCH_OTLP_GRPC="127.0.0.1:%d" % ports["grpc"],
               BENCH_OTLP_HTTP="127.0.0.1:%d" % ports["http"], BENCH_SINK="127.0.0.1:%d" % ports["sink"],
               BENCH_ADMIN="127.0.0.1:%d" % ports["admin"], BENCH_PROM="127.0.0.1:%d" % ports["prom"],
               BENCH_GZIP_LEVEL=str(sc["gzip"] or 1))
    res = {"load_before": loadavg()}
    sink_out = open(os.path.join(tmp, "sink.json"), "w+")
    sink = start([LOADGEN, "sink", "--listen", "127.0.0.1:%d" % ports["sink"]], 0, out=sink_out)
    coll_log = open(os.path.join(tmp, "collector.log"), "w")
    coll = start(collector_cmd(sc, ports, tmp), 1, env=env, out=coll_log, err=coll_log)
    grpc = "127.0.0.1:%d" % ports["grpc"]
    acked = 0
    try:
        if not (wait_port(ports["sink"]) and wait_port(ports["grpc"])):
            raise RuntimeError("collector or sink did not start (see %s)" % tmp)
        time.sleep(0.5)
        sampler = Sampler(coll.pid)
        sampler.start()
        # 1. Maximum sustained rate.
        s, ticks = loadgen(grpc, args.duration, ["--connections", "2", "--inflight", "4", "--max-retries", "3"],
                           sc["logs"], stamp=False)
        acked += s["acknowledged_spans"]
        res["max"] = steady(ticks, sampler, args.warmup, args.cooldown)
        res["max"].update(refused_total=s["refused"], errors_total=s["errors"], dropped_spans=s["dropped_spans"],
                          request_latency_ms=s["request_latency_ms"])
        res["peak_rss_mib"] = round(status_kib(coll.pid, "VmHWM") / 1024, 1)
        # 2. Added latency at a fixed rate.
        if "latency" in sc["phases"]:
            p = subprocess.Popen(["taskset", "-c", "0", LOADGEN, "--endpoint", "http://" + grpc, "--rate",
                                  str(args.latency_rate), "--duration", "%ss" % args.latency_duration,
                                  "--batch-size", str(BATCH_SIZE)]
                                 + ([] if sc["logs"] else ["--no-logs"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(args.warmup)
            if sc["otlp_out"]:
                http("POST", "http://127.0.0.1:%d/reset" % ports["sink"])
            out, _ = p.communicate(timeout=args.latency_duration + 180)
            s = json.loads(out.strip().splitlines()[-1])
            acked += s["acknowledged_spans"]
            lat = {"rate": args.latency_rate, "achieved_spans_per_sec": s["spans_per_sec"],
                   "request_latency_ms": s["request_latency_ms"], "refused": s["refused"]}
            if sc["otlp_out"]:
                time.sleep(0.5)
                _, body = http("GET", "http://127.0.0.1:%d/stats" % ports["sink"])
                lat["added_latency_ms"] = json.loads(body)["added_latency_ms"]
            res["latency"] = lat
            res["peak_rss_mib"] = round(status_kib(coll.pid, "VmHWM") / 1024, 1)
        # 3. Overload: 5x the sustained rate.
        if "overload" in sc["phases"] and res["max"]["spans_per_sec"] > 0:
            res["overload"] = overload(grpc, 5 * res["max"]["spans_per_sec"], args, sc["logs"], coll.pid)
            acked += res["overload"].pop("acknowledged_spans")
        sampler.stop.set()
        res["load_after"] = loadavg()
    finally:
        stop(coll)
        time.sleep(0.3)
        stop(sink, 5)
    sink_out.seek(0)
    lines = [l for l in sink_out.read().splitlines() if l.startswith("{")]
    if sc["otlp_out"] and lines:
        got = json.loads(lines[-1])["spans_total"]
        res["delivered_spans"], res["acknowledged_spans"] = got, acked
        res["lost_spans"] = acked - got
    return res


def overload(grpc, rate, args, logs, pid):
    """Offers `rate` spans/s open loop (independent of the answers) for --overload-duration seconds."""
    s, _ = loadgen(grpc, args.overload_duration,
                   ["--rate", str(rate), "--open-loop", str(args.overload_inflight), "--connections", "4",
                    "--max-retries", "5"], logs, stamp=False)
    ol = s.get("open_loop") or {}
    offered = s["sent_spans"] + ol.get("unsent_spans", 0)
    return {
        "target_spans_per_sec": rate,
        "offered_spans_per_sec": round(offered / s["elapsed_s"]) if s["elapsed_s"] else 0,
        "sent_spans_per_sec": round(s["sent_spans"] / s["elapsed_s"]) if s["elapsed_s"] else 0,
        "acknowledged_spans_per_sec": s["spans_per_sec"], "acknowledged_spans": s["acknowledged_spans"],
        "unsent_spans": ol.get("unsent_spans"), "peak_inflight": ol.get("peak_inflight"),
        "refused": s["refused"], "refused_by_status": s["refused_by_status"], "errors": s["errors"],
        "error_samples": s["error_samples"], "dropped_spans": s["dropped_spans"],
        "peak_rss_mib": round(status_kib(pid, "VmHWM") / 1024, 1),
    }


class RssSampler(threading.Thread):
    """Samples a process's resident set every second: [(seconds since start, MiB)]."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop, self.t0 = pid, [], threading.Event(), time.time()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append((round(time.time() - self.t0, 1), round(status_kib(self.pid, "VmRSS") / 1024, 1)))
            except OSError:
                return
            self.stop.wait(1.0)


# What the collector holds, sampled from its self-telemetry during --memory runs (what bounds the RSS over a long
# run): the connector's pending operations, remembered span ids and trace records, the business state's entries,
# the journal's records not yet committed, the storage file and the last snapshot.
HOLDINGS = (("pending", "bizpilot_connector_business_impact_pending_spans"),
            ("span_ids", "bizpilot_connector_business_impact_span_ids"),
            ("traces", "bizpilot_connector_business_impact_trace_context_traces"),
            ("records", "bizpilot_connector_business_impact_records{"),
            ("incidents", "bizpilot_connector_business_impact_incidents{"),
            ("state", "bizpilot_business_state_entries"),
            ("journal", "bizpilot_storage_journal_pending_records"),
            ("file_mb", "bizpilot_storage_file_bytes"),
            ("snapshot_mb", "bizpilot_connector_business_impact_snapshot_bytes{"))


class HoldingSampler(threading.Thread):
    """Every `every` seconds: RSS, anonymous RSS (MiB) and the HOLDINGS sums from the admin endpoint."""

    def __init__(self, pid, port, every):
        super().__init__(daemon=True)
        self.pid, self.port, self.every = pid, port, every
        self.samples, self.stop, self.t0 = [], threading.Event(), time.time()

    def run(self):
        while not self.stop.wait(self.every):
            try:
                row = {"t": round(time.time() - self.t0), "rss": round(status_kib(self.pid, "VmRSS") / 1024, 1),
                       "anon": round(status_kib(self.pid, "RssAnon") / 1024, 1)}
            except OSError:
                return
            series = scrape(self.port, "bizpilot_")
            for name, prefix in HOLDINGS:
                vals = [v for k, v in series.items() if k.startswith(prefix)]
                if vals:
                    row[name] = round(sum(vals) / 1e6, 2) if name.endswith("_mb") else int(sum(vals))
            self.samples.append(row)


def scrape(port, prefix):
    """Self-telemetry lines of the collector's admin endpoint starting with `prefix`: {series: value}."""
    try:
        _, body = http("GET", "http://127.0.0.1:%d/metrics" % port)
    except Exception:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(prefix):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def memory_phase(rate, seconds, args, overload_after=None):
    """A fresh embedded-default-pipeline collector on core 1 fed `rate` spans/s (closed loop, as fast as it
    goes without a rate) from core 0; returns its RSS trajectory, peak, CPU and the connector's state."""
    ports = {k: free_port() for k in ("grpc", "http", "admin", "prom", "health")}
    env = dict(os.environ, BIZPILOT_OTLP_GRPC_ENDPOINT="127.0.0.1:%d" % ports["grpc"],
               BIZPILOT_OTLP_HTTP_ENDPOINT="127.0.0.1:%d" % ports["http"],
               BIZPILOT_ADMIN_ENDPOINT="127.0.0.1:%d" % ports["admin"],
               BIZPILOT_PROMETHEUS_ENDPOINT="127.0.0.1:%d" % ports["prom"],
               BIZPILOT_HEALTH_ENDPOINT="127.0.0.1:%d" % ports["health"])
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    for kv in args.collector_env:
        # e.g. MALLOC_MMAP_THRESHOLD_=131072 (glibc tunables a deployment sets in the collector's environment).
        k, _, v = kv.partition("=")
        env[k] = v
    if args.preload:
        # Another allocator without rebuilding: e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (Debian's
        # libjemalloc2) or libmimalloc.so.2 (libmimalloc2.0).
        env["LD_PRELOAD"] = args.preload
    tmp = tempfile.mkdtemp(prefix="bench-memory-")
    # A fresh collector: its durable state (business_state checkpoints) in the run's own directory, not in
    # ./bizpilot-data, where every run would restore the state the previous runs left.
    env["BIZPILOT_STORAGE_DIR"] = os.path.join(tmp, "bizpilot-data")
    coll_log = open(os.path.join(tmp, "collector.log"), "w")
    cmd = [BIZPILOT, "run"] + (["--config", args.memory_config] if args.memory_config else [])
    heap_file = os.path.join(tmp, "heaptrack")
    if args.heaptrack:
        # The collector's heap profile (peak heap, what allocated it); RSS and CPU then include heaptrack's own.
        cmd = ["heaptrack", "-o", heap_file] + cmd
    coll = start(cmd, 1, env=env, out=coll_log, err=coll_log)
    grpc = "127.0.0.1:%d" % ports["grpc"]
    res = {"rate": rate, "seconds": seconds, "load_before": loadavg()}
    try:
        if not wait_port(ports["grpc"]):
            raise RuntimeError("collector did not start (see %s)" % tmp)
        time.sleep(0.5)
        # Under heaptrack, coll.pid is heaptrack's wrapper: measure the collector itself.
        pid = collector_pid(coll.pid, BIZPILOT)
        res["measured_pid_is_collector"] = pid != coll.pid or not args.heaptrack
        cpu, rss = Sampler(pid), RssSampler(pid)
        held = HoldingSampler(pid, ports["admin"], args.memory_sample or max(5.0, seconds / 10))
        cpu.start()
        rss.start()
        held.start()
        extra = ["--connections", "4", "--inflight", "4", "--max-retries", "5"]
        if rate and args.no_realtime:
            extra = ["--rate", str(rate)] + extra
        elif rate:
            # Event time follows the wall clock (as live traffic's does), so the connector holds what it would
            # hold in production: `allowed_lateness` worth of operations.
            extra = ["--rate", str(rate), "--realtime", "--ring-spans", str(min(1 << 20, max(1 << 16, rate * 10)))
                     ] + extra
        s, ticks = loadgen(grpc, seconds, extra, True, stamp=False)
        st = steady(ticks, cpu, min(args.warmup, seconds / 4), args.cooldown)
        res.update(achieved_spans_per_sec=s["spans_per_sec"], acknowledged_spans=s["acknowledged_spans"],
                   refused=s["refused"], errors=s["errors"], dropped_spans=s["dropped_spans"],
                   cpu_s_per_million_spans=get(st, "cpu_s_per_million_spans"),
                   cpu_utilisation=get(st, "cpu_utilisation"),
                   request_latency_ms=s["request_latency_ms"])
        res["impact"] = scrape(ports["admin"], "bizpilot_connector_business_impact")
        res["peak_rss_mib"] = round(status_kib(pid, "VmHWM") / 1024, 1)
        res["final_rss_mib"] = round(status_kib(pid, "VmRSS") / 1024, 1)
        if overload_after:
            res["overload"] = overload(grpc, overload_after * s["spans_per_sec"], args, True, pid)
            res["overload"]["limiter_refusals"] = scrape(ports["admin"], "bizpilot_processor_memory_limiter")
        rss.stop.set()
        cpu.stop.set()
        held.stop.set()
        res["rss_mib"] = rss.samples
        res["holdings"] = held.samples
        res["load_after"] = loadavg()
    finally:
        if args.heaptrack:
            # heaptrack runs the collector as its child: stop the whole group, then let heaptrack write its file.
            try:
                os.killpg(coll.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        stop(coll)
    res["malloc_arena_max"] = args.malloc_arena_max
    res["preload"] = args.preload
    res["collector_env"] = args.collector_env
    if args.heaptrack:
        res["heap"] = heap_summary(heap_file)
    return res


def heap_summary(prefix):
    """Peak heap and the top allocation sites by peak from a heaptrack file (heaptrack_print)."""
    files = [f for f in os.listdir(os.path.dirname(prefix)) if f.startswith(os.path.basename(prefix))]
    if not files:
        return {"error": "no heaptrack file"}
    path = os.path.join(os.path.dirname(prefix), sorted(files)[-1])
    r = subprocess.run(["heaptrack_print", "-f", path, "--print-peaks", "1", "--print-allocators", "0",
                        "--print-temporary", "0", "--print-leaks", "0", "-n", "8", "-s", "4"],
                       capture_output=True, text=True)
    out = {"file": path}
    m = re.search(r"peak heap memory consumption: ([0-9.]+)([KMG]?)B?", r.stdout)
    if m:
        out["peak_heap_mb"] = round(float(m.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1, "G": 1e3}[m.group(2)], 1)
    m = re.search(r"peak RSS \(including heaptrack overhead\): ([0-9.]+)([KMG]?)B?", r.stdout)
    if m:
        out["peak_rss_with_heaptrack_mb"] = round(float(m.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1, "G": 1e3}[m.group(2)], 1)
    out["peaks"] = r.stdout[r.stdout.find("PEAK MEMORY CONSUMERS"):][:6000]
    return out


def memory_main(args):
    """--memory: the embedded default pipeline's memory at fixed rates and at 5x overload."""
    report = {"machine": machine(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]), "phases": []}
    rates = [int(r) for r in args.memory_rates.split(",") if r]
    for rate in rates:
        log("default pipeline at %s spans/s for %ss (load %.2f)" % (fmt(rate), args.memory_duration, loadavg()[0]))
        r = memory_phase(rate, args.memory_duration, args)
        log("  achieved %s spans/s, peak RSS %s MiB, final %s MiB, %s CPU-s/M" % (
            fmt(r.get("achieved_spans_per_sec")), r.get("peak_rss_mib"), r.get("final_rss_mib"),
            r.get("cpu_s_per_million_spans")))
        report["phases"].append(r)
    if not args.no_overload:
        log("default pipeline: maximum rate for %ss, then 5x it open loop for %ss" % (
            args.duration, args.overload_duration))
        r = memory_phase(None, args.duration, args, overload_after=5)
        log("  max %s spans/s, overload: %s" % (fmt(r.get("achieved_spans_per_sec")), r.get("overload")))
        report["phases"].append(r)
    L = ["Collector: %s%s%s%s%s%s." % (os.path.relpath(BIZPILOT, ROOT),
                                 ", --config %s" % args.memory_config if args.memory_config else "",
                                 "".join(", " + kv for kv in args.collector_env),
                                 ", MALLOC_ARENA_MAX=%d" % args.malloc_arena_max if args.malloc_arena_max else "",
                                 ", LD_PRELOAD=%s" % args.preload if args.preload else "",
                                 ", under heaptrack" if args.heaptrack else ""), "",
         "| phase | offered | achieved spans/s | CPU-s / M spans | peak RSS | RSS at the end | pending ops | "
         "peak heap | RSS trajectory (MiB, every ~10 % of the run) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["phases"]:
        traj = r.get("rss_mib") or []
        step = max(1, len(traj) // 10)
        pend = [v for k, v in (r.get("impact") or {}).items() if "pending_spans" in k]
        heap = (r.get("heap") or {}).get("peak_heap_mb")
        L.append("| %s | %s | %s | %s | %s MiB | %s MiB | %s | %s | %s |" % (
            "fixed rate" if r["rate"] else "maximum (closed loop)", fmt(r["rate"]) if r["rate"] else "max",
            fmt(r.get("achieved_spans_per_sec")), fmt(r.get("cpu_s_per_million_spans"), "", 2),
            r.get("peak_rss_mib"), r.get("final_rss_mib"), fmt(pend[0]) if pend else "n/a",
            "%s MB" % heap if heap is not None else "—", " ".join(str(m) for _, m in traj[::step])))
        ov = r.get("overload")
        if ov:
            L.append("| 5× overload, open loop | %s | %s | — | %s MiB | — | — | — | refused %s %s, unsent %s, errors %s, "
                     "peak in flight %s |" % (
                         fmt(ov["offered_spans_per_sec"]), fmt(ov["acknowledged_spans_per_sec"]),
                         ov["peak_rss_mib"], fmt(ov["refused"]), ov["refused_by_status"] or "", fmt(ov["unsent_spans"]),
                         fmt(ov["errors"]), fmt(ov["peak_inflight"])))
    for r in report["phases"]:
        rows = r.get("holdings") or []
        if rows:
            cols = ["t", "rss", "anon"] + [n for n, _ in HOLDINGS if any(n in x for x in rows)]
            L += ["", "What it holds over the %s run (s; RSS and anonymous RSS in MiB; counts; MB):" % (
                "fixed-rate" if r["rate"] else "maximum-rate"), "",
                  "| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
            cell = lambda x, c: str(x.get(c)) if c in ("rss", "anon") else fmt(x.get(c), "", 2 if c.endswith("_mb") else 0)
            L += ["| " + " | ".join(cell(x, c) for c in cols) + " |" for x in rows]
    lo = [x for r in report["phases"] for x in (r.get("load_before"), r.get("load_after")) if x]
    L.append("")
    L.append("Load average (1 min) during the runs: %s." % ", ".join("%.2f" % x[0] for x in lo))
    save(args.out, "memory-", "memory-latest", report, "\n".join(L) + "\n")


def save(out, prefix, latest, report, md):
    """Writes the report as JSON and markdown, stamped and as `latest`, and prints the markdown."""
    os.makedirs(out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in (prefix + stamp, latest):
        with open(os.path.join(out, base + ".json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(out, base + ".md"), "w") as f:
            f.write(md)
    print(md)
    log("results in %s (%s%s.{md,json}, %s.{md,json})" % (out, prefix, stamp, latest))


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def summarise(runs):
    m = lambda *p: median([get(r, *p) for r in runs])
    return {
        "spans_per_sec": m("max", "spans_per_sec"),
        "cpu_s_per_million_spans": m("max", "cpu_s_per_million_spans"),
        "cpu_utilisation": m("max", "cpu_utilisation"),
        # Spans per CPU-second of the collector: what one fully available core would sustain. Less sensitive
        # to other processes competing for the collector's core than the measured rate.
        "spans_per_cpu_second": m("max", "spans_per_cpu_second"),
        "refused_in_window": m("max", "refused_in_window"),
        "peak_rss_mib": m("peak_rss_mib"),
        "added_p50_ms": m("latency", "added_latency_ms", "p50"),
        "added_p99_ms": m("latency", "added_latency_ms", "p99"),
        "request_p50_ms": m("latency", "request_latency_ms", "p50"),
        "request_p99_ms": m("latency", "request_latency_ms", "p99"),
        "overload_offered": m("overload", "offered_spans_per_sec"),
        "overload_rss_mib": m("overload", "peak_rss_mib"),
        "overload_refused": m("overload", "refused"),
        "overload_errors": max([get(r, "overload", "errors") or 0 for r in runs]) if any(
            get(r, "overload") for r in runs) else None,
        "overload_statuses": sorted({k for r in runs for k in (get(r, "overload", "refused_by_status") or {})}),
        "limiter_mib": None,
        "lost_spans": max([r.get("lost_spans", 0) for r in runs]) if any("lost_spans" in r for r in runs) else None,
    }


def criterion_figures():
    """ns per span from the criterion benches, if they were run (cargo bench -p bizpilot-benches)."""
    out = {}
    base = os.path.join(ROOT, "target", "criterion")
    if not os.path.isdir(base):
        return out
    for group in sorted(os.listdir(base)):
        gdir = os.path.join(base, group)
        for bench in sorted(os.listdir(gdir)) if os.path.isdir(gdir) else []:
            est = os.path.join(gdir, bench, "new", "estimates.json")
            meta = os.path.join(gdir, bench, "new", "benchmark.json")
            if not (os.path.exists(est) and os.path.exists(meta)):
                continue
            with open(est) as f, open(meta) as g:
                ns = json.load(f)["median"]["point_estimate"]
                b = json.load(g)
            elems = (b.get("throughput") or {}).get("Elements") or 1
            out["%s/%s" % (group, b.get("function_id", bench))] = round(ns / elems, 1)
    return out


def fmt(v, unit="", digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, (int, float)):
        return ("{:,.%df}" % digits).format(v) + unit
    return str(v)


def verdict(ok, value, target, higher_is_better=True, unit=""):
    if value is None:
        return "n/a"
    if ok:
        return "PASS"
    gap = (value / target - 1) * 100 if target else 0
    return "MISS (%s vs %s, %+.0f %%)" % (fmt(value, unit, 1 if unit == " ms" else 0), fmt(target, unit), gap)


def targets(summary):
    rows = []
    rotel = get(summary, "rotel", "spans_per_sec")
    ref = rotel or ROTEL_REFERENCE
    src = "measured Rotel" if rotel else "Rotel reference 58,000"
    fw, bz, ing = summary.get("forward"), summary.get("business"), summary.get("ingest")

    def row(name, value, target, ok, unit="", higher=True):
        rows.append({"target": name, "value": value, "threshold": target,
                     "result": verdict(ok, value, target, higher, unit)})

    def rate_row(name, s, target):
        v, cap = s["spans_per_sec"], s["spans_per_cpu_second"]
        res = "measured: " + verdict(v is not None and v >= target, v, target)
        if cap is not None:
            res += "; per CPU-second: " + verdict(cap >= target, cap, target)
        rows.append({"target": name, "value": v, "spans_per_cpu_second": cap, "threshold": target, "result": res})

    if fw:
        rate_row("(a) forward ≥ 2× %s (%s spans/s)" % (src, fmt(2 * ref)), fw, 2 * ref)
        v = fw["peak_rss_mib"]
        row("(a) forward peak RSS < %d MiB" % FORWARD_RSS_MIB, v, FORWARD_RSS_MIB,
            v is not None and v < FORWARD_RSS_MIB, " MiB", False)
    if bz:
        rate_row("(b) business ≥ 1.5× %s (%s spans/s)" % (src, fmt(1.5 * ref)), bz, 1.5 * ref)
    if ing:
        rate_row("(c) ingest ≥ %s spans/s on one core" % fmt(INGEST_TARGET), ing, INGEST_TARGET)
    for name, s in (("forward", fw), ("business", bz)):
        if s and s.get("added_p99_ms") is not None:
            v = s["added_p99_ms"]
            row("p99 added latency < %g ms at 50,000 spans/s (%s)" % (LATENCY_TARGET_MS, name), v,
                LATENCY_TARGET_MS, v < LATENCY_TARGET_MS, " ms", False)
    for name, s in (("forward", fw), ("business", bz), ("ingest", ing)):
        if s and s.get("overload_rss_mib") is not None:
            v, lim = s["overload_rss_mib"], s["limiter_mib"]
            row("5× overload (%s): peak RSS < memory limiter bound %s MiB" % (name, lim), v, lim,
                lim is not None and v < lim, " MiB", False)
            bad = [st for st in s["overload_statuses"] if st not in ("grpc UNAVAILABLE", "grpc RESOURCE_EXHAUSTED")]
            ok = not bad and not s["overload_errors"]
            rows.append({"target": "5× overload (%s): refusals retryable, no other failures" % name,
                         "value": {"statuses": s["overload_statuses"], "errors": s["overload_errors"]},
                         "threshold": None,
                         "result": "PASS" if ok else "MISS (%d non-retryable failures, statuses %s)" % (
                             s["overload_errors"] or 0, bad)})
    return rows


def markdown(report):
    L = []
    mc = report["machine"]
    L.append("Machine: %s cores, %s, kernel %s. Load average (1 min) during the runs: min %.2f, median %.2f, "
             "max %.2f. Runs per figure: %d (median)." % (
                 mc["nproc"], mc["cpu"], mc["kernel"], *report["load_1min"], report["runs"]))
    L.append("")
    L.append("| scenario | spans/s (max sustained) | CPU-s / M spans | spans per CPU-second | CPU use | peak RSS "
             "| added latency p50 / p99 @ %s spans/s | 5× overload: offered spans/s, peak RSS, refusals (statuses) |"
             % fmt(report["latency_rate"]))
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in ORDER:
        s = report["summary"].get(name)
        if not s:
            continue
        lat = "n/a"
        if s["added_p99_ms"] is not None:
            lat = "%s / %s ms" % (fmt(s["added_p50_ms"], "", 2), fmt(s["added_p99_ms"], "", 2))
        elif s["request_p99_ms"] is not None:
            lat = "(no OTLP out; request %s / %s ms)" % (fmt(s["request_p50_ms"], "", 2),
                                                         fmt(s["request_p99_ms"], "", 2))
        ov = "—"
        if s["overload_offered"] is not None:
            ov = "%s, %s MiB, %s (%s)" % (fmt(s["overload_offered"]), fmt(s["overload_rss_mib"], "", 1),
                                          fmt(s["overload_refused"]), ", ".join(s["overload_statuses"]) or "none")
        L.append("| %s | %s | %s | %s | %s | %s MiB | %s | %s |" % (
            SCENARIOS[name]["label"], fmt(s["spans_per_sec"]), fmt(s["cpu_s_per_million_spans"], "", 2),
            fmt(s.get("spans_per_cpu_second")), fmt(s["cpu_utilisation"], "", 2), fmt(s["peak_rss_mib"], "", 1),
            lat, ov))
    if report.get("generator_ceiling"):
        L.append("")
        L.append("Generator + sink ceiling (loadgen → sink directly, both on core 0): %s spans/s (scenarios "
                 "with OTLP out share core 0 the same way)." % fmt(report["generator_ceiling"]))
    if report.get("notes"):
        L.append("")
        for n in report["notes"]:
            L.append("- " + n)
    L.append("")
    L.append("| target | result |")
    L.append("|---|---|")
    for t in report["targets"]:
        L.append("| %s | %s |" % (t["target"], t["result"]))
    crit = report.get("criterion_ns_per_span")
    if crit:
        L.append("")
        L.append("Criterion (`cargo bench -p bizpilot-benches`), ns per span (= CPU-s per million spans × 1000):")
        L.append("")
        L.append("| bench | ns/span |")
        L.append("|---|---:|")
        for k, v in crit.items():
            L.append("| %s | %s |" % (k, fmt(v, "", 1)))
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(ORDER), help="comma-separated, of: " + ", ".join(ORDER))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=16, help="seconds at maximum rate")
    ap.add_argument("--warmup", type=float, default=4)
    ap.add_argument("--cooldown", type=float, default=1)
    ap.add_argument("--latency-rate", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=512, help="spans per request the generator sends")
    ap.add_argument("--latency-duration", type=float, default=12)
    ap.add_argument("--overload-duration", type=float, default=10)
    ap.add_argument("--overload-inflight", type=int, default=2048,
                    help="most requests in flight in the open-loop overload phase")
    ap.add_argument("--memory", action="store_true",
                    help="the embedded default pipeline's memory at fixed rates and at 5x overload (see above)")
    ap.add_argument("--memory-rates", default="50000,400000", help="spans/s, comma-separated (--memory)")
    ap.add_argument("--memory-duration", type=float, default=60, help="seconds per rate (--memory)")
    ap.add_argument("--memory-sample", type=float, default=None,
                    help="--memory: seconds between samples of what the collector holds (default: a tenth of the run)")
    ap.add_argument("--no-overload", action="store_true", help="--memory without the overload phase")
    ap.add_argument("--no-realtime", action="store_true",
                    help="--memory with the generator's ring replayed as is (event time advances by the ring's "
                         "simulated period per lap, much faster than the wall clock)")
    ap.add_argument("--malloc-arena-max", type=int, default=0,
                    help="--memory: run the collector with MALLOC_ARENA_MAX set to this (glibc malloc arenas)")
    ap.add_argument("--collector-env", metavar="KEY=VALUE", action="append", default=[],
                    help="--memory: set KEY=VALUE in the collector's environment (repeatable), e.g. "
                         "MALLOC_MMAP_THRESHOLD_=131072")
    ap.add_argument("--preload", metavar="LIB", default="",
                    help="--memory: run the collector with LD_PRELOAD=LIB (another malloc, e.g. libjemalloc.so.2)")
    ap.add_argument("--heaptrack", action="store_true",
                    help="--memory: run the collector under heaptrack and report its peak heap (RSS then includes "
                         "heaptrack's own)")
    ap.add_argument("--memory-config", metavar="FILE", default="",
                    help="--memory: run this config instead of the embedded default pipeline (e.g. a copy of "
                         "pipelines/opentelemetry-demo.yaml with other batch settings, to compare without a rebuild)")
    ap.add_argument("--bizpilot", metavar="PATH", help="the bizpilot binary to measure (default: the release build)")
    ap.add_argument("--quick", action="store_true", help="1 short run per scenario (checks the harness)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="wait up to this many seconds for the 1-minute load average to drop below 0.5")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--render", metavar="JSON", help="only re-render the tables of a saved report")
    ap.add_argument("--refresh-criterion", action="store_true",
                    help="with --render: take the criterion figures from target/criterion now and save the report")
    args = ap.parse_args()
    # SIGTERM/SIGINT unwind through the runs' cleanup (collector and sink are stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        for name, runs in report["scenarios"].items():
            for r in runs:
                mx = r.get("max") or {}
                if mx.get("cpu_s") and "spans_per_cpu_second" not in mx:
                    mx["spans_per_cpu_second"] = round(mx["spans_per_sec"] * mx["window_s"] / mx["cpu_s"])
            lim = report["summary"][name].get("limiter_mib")
            report["summary"][name] = summarise([r for r in runs if "error" not in r])
            report["summary"][name]["limiter_mib"] = lim
        report["targets"] = targets(report["summary"])
        if args.refresh_criterion:
            report["criterion_ns_per_span"] = criterion_figures()
            with open(args.render, "w") as f:
                json.dump(report, f, indent=1)
        print(markdown(report))
        return
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size
    if args.quick:
        args.runs, args.duration, args.warmup, args.latency_duration, args.overload_duration = 1, 6, 2, 6, 5
    names = [n for n in args.scenarios.split(",") if n]
    for n in names:
        if n not in SCENARIOS:
            ap.error("unknown scenario %r" % n)
    if args.bizpilot:
        global BIZPILOT
        BIZPILOT = os.path.abspath(args.bizpilot)
    if not args.no_build:
        build()
    if args.memory:
        memory_main(args)
        return
    notes = []
    global ROTEL_EXE
    ROTEL_EXE = None
    if "rotel" in names:
        ROTEL_EXE, why = rotel_binary()
        if not ROTEL_EXE:
            notes.append("Rotel not run: %s; targets use the 58,000 spans/s reference." % why)
            names.remove("rotel")
    if args.wait_quiet:
        end = time.time() + args.wait_quiet
        while loadavg()[0] >= 0.5 and time.time() < end:
            log("waiting for a quiet machine: load %.2f" % loadavg()[0])
            time.sleep(15)
    log("load average %s" % loadavg())
    report = {"machine": machine(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "runs": args.runs, "latency_rate": args.latency_rate, "batch_size": BATCH_SIZE,
              "scenarios": {}, "summary": {}}
    loads = [loadavg()[0]]
    # Generator ceiling: what the load generator and the sink manage on core 0 alone.
    port = free_port()
    sink = start([LOADGEN, "sink", "--listen", "127.0.0.1:%d" % port], 0)
    wait_port(port)
    s, _ = loadgen("127.0.0.1:%d" % port, max(4, args.duration / 2), ["--connections", "2", "--inflight", "4"],
                   False, stamp=False)
    stop(sink, 5)
    report["generator_ceiling"] = s["spans_per_sec"]
    log("generator ceiling %s spans/s" % fmt(s["spans_per_sec"]))
    for name in [n for n in ORDER if n in names]:
        sc = SCENARIOS[name]
        runs = []
        for i in range(args.runs):
            log("%s: run %d/%d (load %.2f)" % (name, i + 1, args.runs, loadavg()[0]))
            try:
                r = one_run(name, sc, args)
            except Exception as e:  # a failed run is reported, not fatal
                log("%s run %d failed: %s" % (name, i + 1, e))
                r = {"error": str(e)}
            loads += [x[0] for x in (r.get("load_before"), r.get("load_after")) if x]
            runs.append(r)
            log("%s: %s spans/s, %s CPU-s/M, RSS %s MiB, latency %s" % (
                name, fmt(get(r, "max", "spans_per_sec")), fmt(get(r, "max", "cpu_s_per_million_spans"), "", 2),
                fmt(r.get("peak_rss_mib"), "", 1), get(r, "latency", "added_latency_ms") or get(
                    r, "latency", "request_latency_ms")))
        report["scenarios"][name] = runs
        report["summary"][name] = summarise([r for r in runs if "error" not in r])
        report["summary"][name]["limiter_mib"] = limiter_mib(sc)
        util = report["summary"][name]["cpu_utilisation"]
        if util is not None and util < 0.9:
            notes.append("%s: the collector used only %.2f of its core at the maximum rate: the figure is bound by "
                         "something else (the generator on core 0, or waiting), not by the collector's CPU."
                         % (name, util))
    report["load_1min"] = [min(loads), statistics.median(loads), max(loads)]
    if report["load_1min"][2] >= 0.5:
        notes.append("The machine was not quiet (1-minute load average up to %.2f with 2 cores): figures are "
                     "noisy." % report["load_1min"][2])
    report["notes"] = notes
    report["targets"] = targets(report["summary"])
    report["criterion_ns_per_span"] = criterion_figures()
    report["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    save(args.out, "run-", "latest", report, markdown(report))


if __name__ == "__main__":
    main()
