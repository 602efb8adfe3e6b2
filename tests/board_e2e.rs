//! End to end: the live business board in a real headless Chromium (Debian's `chromium`, installed by
//! `.ci/prereq-chromium.sh`), driven through the DevTools protocol over `--remote-debugging-pipe` (a minimal
//! client: NUL-separated JSON on two pipes; no WebSocket or browser-automation crate needed).
//!
//! The shipped `pipelines/opentelemetry-demo.yaml` (plus an `order_kpi` connector) runs in the real binary;
//! the board is loaded first, then a generated payment outage is sent with a real OTLP/gRPC client (the
//! OpenTelemetry protocol's generated tonic client). Within 5 s of the API's final figures the page — updated
//! live over server-sent events, never reloaded — shows the same revenue at risk, recovered revenue and
//! incidents as `GET /api/v1/impact` and `GET /api/v1/incidents` (to the cent), the same affected customers in
//! the same order (highest cart value first), and no console error. Screenshots at 1280×800 and 1920×1080 are
//! saved under `target/board-screenshots/`.

mod common;

use base64::Engine as _;
use bizpilot_shopgen::{Emission, Shop, ShopConfig, pack_events, pack_traces};
use common::{Bizpilot, free_addr, free_port, json_get, start_pipeline, workspace_root};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value as Json, json};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------------------------
// A minimal DevTools client over Chromium's pipe transport (fd 3: commands in, fd 4: answers and events out).

struct Chromium {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Json>,
    next: u64,
    session: String,
    /// Console errors, uncaught exceptions and error log entries seen so far.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

fn chromium_binary() -> PathBuf {
    for b in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh").arg("-c").arg(format!("command -v {b}")).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("no chromium on PATH: run .ci/prereq-chromium.sh (Debian package `chromium`)");
}

impl Chromium {
    fn launch() -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        // The shell hands our stdin/stdout pipes to Chromium as fds 3 and 4 (no unsafe fd juggling here).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                "--lang=en-US",
                "--force-device-scale-factor=1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Json>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut c = Chromium {
            child,
            stdin,
            rx,
            next: 0,
            session: String::new(),
            errors: Vec::new(),
            _profile: profile,
        };
        let target = c.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = c.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        c.session = attached["sessionId"].as_str().expect("sessionId").to_string();
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            c.call(m, json!({}));
        }
        c
    }

    fn send(&mut self, session: Option<String>, method: &str, params: Json) -> Json {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.stdin.write_all(&bytes).expect("write to chromium");
        self.stdin.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if m["id"].as_u64() == Some(id) {
                if let Some(e) = m.get("error") {
                    panic!("{method}: {e}");
                }
                return m["result"].clone();
            }
            self.event(&m);
        }
    }

    fn call_browser(&mut self, method: &str, params: Json) -> Json {
        self.send(None, method, params)
    }

    fn call(&mut self, method: &str, params: Json) -> Json {
        let s = self.session.clone();
        self.send(Some(s), method, params)
    }

    /// Records what counts as a console error.
    fn event(&mut self, m: &Json) {
        let p = &m["params"];
        match m["method"].as_str() {
            Some("Runtime.consoleAPICalled") if matches!(p["type"].as_str(), Some("error" | "assert")) => {
                self.errors.push(format!("console.{}: {}", p["type"], p["args"]));
            }
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {}", p["exceptionDetails"])),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors
                    .push(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]));
            }
            _ => {}
        }
    }

    /// Handles the events that arrived meanwhile.
    fn pump(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.event(&m);
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Json {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------------

/// The test's configuration: the shipped demo preset, a short join window and idle timeout (a replay runs
/// event time faster than the wall clock), and an `order_kpi` connector on the business events.
const OVERLAY: &str = r#"
connectors:
  business_impact:
    allowed_lateness: 10m
    idle_timeout: 3s
    metrics_flush_interval: 500ms
  order_kpi:
    stages:
      - {name: placed, events: [order.placed]}
      - {name: paid, events: [order.paid]}
      - {name: shipped, events: [order.shipped]}
      - {name: delivered, events: [order.delivered]}
    cancel_events: [order.cancelled]
    kpis:
      - {name: fulfilled_24h, from: placed, to: delivered, deadline: 24h}
    stage_services: {placed: [payment], paid: [shipping], shipped: [shipping]}
processors:
  enrich/join:
    join: {window: 2s}
service:
  pipelines:
    logs/events:
      receivers: [otlp]
      processors: [memory_limiter]
      exporters: [business_events, order_kpi]
    metrics/kpi:
      receivers: [order_kpi]
      exporters: [prometheus]
"#;

fn workload() -> bizpilot_shopgen::Workload {
    let mut cfg: ShopConfig = serde_yaml::from_str(
        r#"
seed: 41
duration: 12m
orders_per_sec: 2
customers: 20000
browse_traces: {min: 0, max: 1}
add_item_traces: false
impact_window: 1h
injections:
  payment_outages:
    - {start: 3m, end: 7m, failure_probability: 0.9, status_message: "payment gateway timeout", timeout: 2s}
  retries: {probability: 0.7, delay: {min: 30s, max: 4m}, max_attempts: 3}
  out_of_order: {probability: 0.1, max_delay: 10s}
  events_after_spans: {probability: 0.2, delay: {min: 100ms, max: 10s}}
"#,
    )
    .unwrap();
    // Event time ends now, so the board reads like a live shop.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    cfg.start_unix_nano = now - 13 * 60 * 1_000_000_000;
    Shop::generate(&cfg).unwrap()
}

/// Sends the emissions with the OpenTelemetry protocol's gRPC client, in arrival order.
async fn send_otlp(grpc: String, emissions: &[Emission]) {
    let traces = TraceServiceClient::connect(grpc.clone()).await.expect("connect traces");
    let logs = LogsServiceClient::connect(grpc).await.expect("connect logs");
    for chunk in emissions.chunks(300) {
        for req in pack_events(chunk.iter().filter_map(Emission::as_event), 10_000) {
            retry(|| {
                let mut l = logs.clone();
                let r = req.clone();
                async move { l.export(r).await.map(|_| ()) }
            })
            .await;
        }
        for req in pack_traces(chunk.iter().filter_map(Emission::as_trace), 10_000) {
            retry(|| {
                let mut t = traces.clone();
                let r = req.clone();
                async move { t.export(r).await.map(|_| ()) }
            })
            .await;
        }
    }
}

async fn retry<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    for attempt in 0..200 {
        match f().await {
            Ok(()) => return,
            Err(s)
                if attempt < 199 && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("OTLP export refused: {s}"),
        }
    }
}

/// An exact decimal (`"-12.345"`) in cents, rounded half away from zero: computed here, independently of
/// the board's own rounding.
fn cents_of_decimal(s: &str) -> i128 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    frac.truncate(9);
    let nanos: i128 = int.parse::<i128>().unwrap() * 1_000_000_000 + frac.parse::<i128>().unwrap();
    let cents = (nanos + 5_000_000) / 10_000_000;
    if neg { -cents } else { cents }
}

/// What the page displays (`$12,345.67`) in cents.
fn cents_of_text(t: &str) -> i128 {
    let neg = t.contains('-') || t.contains('−');
    let digits: String = t.chars().filter(|c| c.is_ascii_digit() || *c == '.').collect();
    let c = cents_of_decimal(&digits);
    if neg { -c } else { c }
}

/// `[(currency, cents)]`, sorted, without zeros, of a list of money objects.
fn cents_by_currency(list: &Json, currency: &str, cents: impl Fn(&Json) -> i128) -> Vec<(String, i128)> {
    let mut v: Vec<(String, i128)> = list
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| (m[currency].as_str().unwrap().to_string(), cents(m)))
        .filter(|(_, c)| *c != 0)
        .collect();
    v.sort();
    v
}

/// An API money list (`[{"currency":"USD","amount":"1.5"}]`) in cents.
fn api_money(list: &Json) -> Vec<(String, i128)> {
    cents_by_currency(list, "currency", |m| cents_of_decimal(m["amount"].as_str().unwrap()))
}

/// The page's money elements in cents, read from the text as displayed.
fn page_money(list: &Json) -> Vec<(String, i128)> {
    cents_by_currency(list, "c", |m| cents_of_text(m["t"].as_str().unwrap()))
}

const READ_PAGE: &str = r#"(() => {
  const money = (root) => root ? [...root.querySelectorAll('.money')].map(e => ({c: e.dataset.currency, a: e.dataset.amount, t: e.textContent})) : [];
  const q = (s) => document.querySelector(s);
  return {
    seq: document.body.dataset.seq || null,
    at_risk: money(q('[data-testid="revenue-at-risk"] .value')),
    recovered: money(q('[data-testid="recovered-revenue"] .value')),
    incidents: [...document.querySelectorAll('tr[data-incident]')].map(r => ({
      id: r.dataset.incident,
      state: r.querySelector('.pill').textContent,
      at_risk: money(r.querySelector('[data-testid="incident-at-risk"]')),
      recovered: money(r.querySelector('[data-testid="incident-recovered"]')),
    })),
    customers: [...document.querySelectorAll('[data-testid="customers"] tbody tr')].map(r => ({
      id: r.querySelector('th').textContent,
      value: money(r.querySelector('[data-testid="cart-value"]')),
    })),
  };
})()"#;

/// The API's figures in the page's shape.
fn api_figures(admin: std::net::SocketAddr) -> Json {
    let (s1, impact) = json_get(admin, "/api/v1/impact?operation=checkout&limit=50");
    let (s2, incidents) = json_get(admin, "/api/v1/incidents?limit=8");
    assert_eq!((s1, s2), (200, 200), "{impact} {incidents}");
    json!({"impact": impact, "incidents": incidents})
}

/// Why the page differs from the API (`None`: it shows the same numbers).
fn differs(page: &Json, api: &Json) -> Option<String> {
    let sum = &api["impact"]["summary"][0];
    let checks = [
        (
            "revenue at risk",
            api_money(&sum["revenue_at_risk"]),
            page_money(&page["at_risk"]),
        ),
        (
            "recovered",
            api_money(&sum["recovered_revenue"]),
            page_money(&page["recovered"]),
        ),
    ];
    for (what, a, p) in checks {
        if a != p {
            return Some(format!("{what}: API {a:?}, page {p:?}"));
        }
    }
    let inc = api["incidents"]["incidents"].as_array().cloned().unwrap_or_default();
    let pinc = page["incidents"].as_array().cloned().unwrap_or_default();
    if inc.len() != pinc.len() {
        return Some(format!(
            "{} incidents in the API, {} on the page",
            inc.len(),
            pinc.len()
        ));
    }
    for (a, p) in inc.iter().zip(&pinc) {
        if a["id"] != p["id"] || a["state"] != p["state"] {
            return Some(format!(
                "incident {} {} vs page {} {}",
                a["id"], a["state"], p["id"], p["state"]
            ));
        }
        if api_money(&a["revenue_at_risk"]) != page_money(&p["at_risk"])
            || api_money(&a["recovered_revenue"]) != page_money(&p["recovered"])
        {
            return Some(format!("incident {} money: API {a} page {p}", a["id"]));
        }
    }
    let cust = api["impact"]["customers"].as_array().cloned().unwrap_or_default();
    let pcust = page["customers"].as_array().cloned().unwrap_or_default();
    if cust.len() != pcust.len() {
        return Some(format!(
            "{} customers in the API, {} on the page",
            cust.len(),
            pcust.len()
        ));
    }
    for (i, (a, p)) in cust.iter().zip(&pcust).enumerate() {
        let a_value = a["cart_value"]["amount"].as_str().map(cents_of_decimal);
        let p_value = page_money(&p["value"]).first().map(|(_, c)| *c);
        if a["customer"].as_str() != p["id"].as_str() || a_value != p_value {
            return Some(format!(
                "customer #{i}: API {} {a_value:?}, page {} {p_value:?}",
                a["customer"], p["id"]
            ));
        }
    }
    None
}

#[test]
fn the_board_in_chromium_shows_a_payment_outage_live_with_the_apis_numbers() {
    let grpc_port = free_port();
    let (http, admin, prom) = (free_addr(), free_addr(), free_addr());
    let env = [
        ("BIZPILOT_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc_port}")),
        ("BIZPILOT_OTLP_HTTP_ENDPOINT", http.to_string()),
        ("BIZPILOT_ADMIN_ENDPOINT", admin.to_string()),
        ("BIZPILOT_PROMETHEUS_ENDPOINT", prom.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b: Bizpilot = start_pipeline("pipelines/opentelemetry-demo.yaml", OVERLAY, admin, &env);
    let work = workload();
    let truth = work.truth.operation("checkout").unwrap().clone();

    // The board first, before any data.
    let mut chrome = Chromium::launch();
    chrome.viewport(1280, 800);
    chrome.call("Page.navigate", json!({"url": format!("http://{admin}/board")}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while chrome.eval("document.readyState === 'complete' && !!document.body.dataset.seq") != json!(true) {
        assert!(Instant::now() < deadline, "the board never went live\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = chrome.eval(READ_PAGE);
    assert_eq!(first["incidents"], json!([]), "an empty process shows no incidents");

    // The outage, with a real OTLP/gRPC client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(send_otlp(format!("http://127.0.0.1:{grpc_port}"), &work.emissions));

    // The API's final figures: every checkout counted, an incident, and the same body for 2.5 s.
    // The page is read alongside, so its delay behind the API is measured, not bounded by the polling.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last: Option<(Json, Instant)> = None;
    let mut pages: Vec<(Instant, Json)> = Vec::new();
    let (api, settled_at) = loop {
        let now = api_figures(admin);
        let seen = Instant::now();
        chrome.pump();
        pages.push((Instant::now(), chrome.eval(READ_PAGE)));
        let sum = &now["impact"]["summary"][0];
        let settled = sum["operations"] == json!(truth.total)
            && now["incidents"]["incidents"].as_array().is_some_and(|l| !l.is_empty());
        match &last {
            Some((prev, since)) if settled && *prev == now && since.elapsed() >= Duration::from_millis(2500) => {
                break (now, *since);
            }
            Some((prev, _)) if settled && *prev == now => {}
            _ => last = Some((now, seen)),
        }
        assert!(
            Instant::now() < deadline,
            "the API never settled: {}\n{}",
            last.map(|l| l.0).unwrap_or_default(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let sum = &api["impact"]["summary"][0];
    assert!(
        sum["failed"].as_u64().unwrap() > 0 && !api_money(&sum["revenue_at_risk"]).is_empty(),
        "no outage: {sum}"
    );
    assert!(
        api["impact"]["customers"].as_array().is_some_and(|c| c.len() >= 10),
        "few affected customers"
    );

    // Within 5 s of the API's final figures, the page (never reloaded) shows them.
    let mut shown = pages
        .into_iter()
        .find(|(t, p)| *t >= settled_at && differs(p, &api).is_none());
    while shown.is_none() {
        chrome.pump();
        let page = chrome.eval(READ_PAGE);
        match differs(&page, &api) {
            None => shown = Some((Instant::now(), page)),
            Some(why) => assert!(
                settled_at.elapsed() < Duration::from_secs(5),
                "the page does not show the API's numbers {:?} after them: {why}",
                settled_at.elapsed()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (at, page) = shown.unwrap();
    let lag = at.saturating_duration_since(settled_at);
    eprintln!("the page showed the API's final figures {lag:?} after the API did");
    assert!(lag < Duration::from_secs(5), "{lag:?}");
    assert!(
        page["seq"].as_str().unwrap().parse::<u64>().unwrap() > first["seq"].as_str().unwrap().parse::<u64>().unwrap()
    );

    // Highest cart value first.
    let values: Vec<i128> = page["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| cents_of_decimal(c["value"][0]["a"].as_str().unwrap()))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "not ordered by value: {values:?}"
    );
    // The exact amounts behind the rounded text are the API's.
    let exact: Vec<&str> = page["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"][0]["a"].as_str().unwrap())
        .collect();
    let api_exact: Vec<&str> = api["impact"]["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cart_value"]["amount"].as_str().unwrap())
        .collect();
    assert_eq!(exact, api_exact);

    // The CSV export lists every affected customer, highest value first.
    let (status, csv) = common::http_get(admin, "/board/customers.csv").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        csv.lines().count() - 1,
        api["impact"]["total"].as_u64().unwrap() as usize,
        "{csv}"
    );

    // The tier filter hides the other tiers' rows.
    let tier = api["impact"]["customers"][0]["tier"].as_str().unwrap().to_string();
    let shown = chrome.eval(&format!(
        r#"(() => {{ const s = document.getElementById('tier'); s.value = {tier:?}; s.dispatchEvent(new Event('change'));
            return [...document.querySelectorAll('[data-testid="customers"] tbody tr')].filter(r => !r.hidden).map(r => r.dataset.tier); }})()"#
    ));
    let shown: Vec<&str> = shown.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(!shown.is_empty() && shown.iter().all(|t| *t == tier), "{shown:?}");
    chrome.eval("(() => { const s = document.getElementById('tier'); s.value = ''; s.dispatchEvent(new Event('change')); return 1; })()");

    // Screenshots for the README, then no console errors from the whole visit.
    let dir = workspace_root().join("target/board-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (w, h) in [(1280, 800), (1920, 1080)] {
        chrome.viewport(w, h);
        std::thread::sleep(Duration::from_millis(1500));
        chrome.eval("window.scrollTo(0, 0); 1");
        chrome.screenshot(&dir.join(format!("board-{w}x{h}.png")));
    }
    // The whole page (for looking at it; not in the README).
    let height = chrome
        .eval("document.documentElement.scrollHeight")
        .as_u64()
        .unwrap_or(2000) as u32;
    chrome.viewport(1920, height.min(8000));
    std::thread::sleep(Duration::from_millis(1000));
    chrome.screenshot(&dir.join("board-1920-full.png"));
    chrome.pump();
    assert!(chrome.errors.is_empty(), "console errors: {:#?}", chrome.errors);
    let metrics = b.metrics();
    assert!(metrics.contains("bizpilot_board_viewers 1"), "one viewer: {metrics}");
}
