//! The live business board: a web page on the admin address (`/`, stable name `/board`) for the people who
//! act on bizpilot's figures during an outage — the operations lead and the customer team.
//!
//! - **Now**: revenue this period against the goal with the projection at the period's end, revenue at risk
//!   (and still open), recovered and lost revenue, failed operations per minute (event time), open incidents
//!   with their top causes, duration, customers and money.
//! - **Who is affected**: affected customers of the board's operation, highest cart value first, with tier,
//!   cart contents, failed attempts and whether they came back; a tier filter; `GET /board/customers.csv`
//!   exports them all (`?tier=gold` filters).
//! - **The 24-hour KPI** (each `order_kpi` KPI): compliance, open orders by stage, the causes of the orders at
//!   risk, and the orders at risk with probability, deadline, explanation and a recommended action.
//! - **Capacity**: the plan of `GET /api/v1/plan`, shown only when a capacity planner answers.
//! - **Pipeline health**: accepted / refused / sent / failed items per component, exporter queue fill and
//!   memory limiter state, read from the process's own metrics registry.
//! - **Charts** of the last hour (revenue and failures per minute, revenue at risk against recovered), live,
//!   with a time picker over event time for replayed data.
//!
//! The figures come from the same HTTP API handlers `/api/v1/impact`, `/api/v1/incidents`, `/api/v1/kpi` and
//! `/api/v1/plan` answer with, so page and API agree to the cent; money is rendered from the API's exact
//! decimal strings (never summed in floats). Server cost is bounded and independent of the number of viewers:
//! one background task builds **one snapshot per second** (figures, HTML fragments of every section, one chart
//! point) and publishes it through a `tokio::sync::watch` channel; every `GET /board/events` (server-sent
//! events) client gets the same pre-serialized bytes, and a slow client skips ticks instead of queueing them.
//! The chart ring holds one point per tick for one hour (3,600 points; the oldest is dropped).
//!
//! The page is rendered on the server (it shows the figures without JavaScript); a small embedded script
//! (`board.js`) swaps in the live fragments, formats money per currency with `Intl.NumberFormat` and draws the
//! charts as plain SVG. Everything is embedded in the binary (no CDN, no external request). The palette is
//! Okabe–Ito (colour-blind safe), states are also written out (never colour only), and every control is
//! reachable with the keyboard.
//!
//! Routes (on the admin server, behind whatever authentication it has): `/`, `/board`, `/board/events`,
//! `/board/snapshot.json`, `/board/customers.csv`, `/board/board.js`, `/board/board.css`. Customer ids are
//! shown as the API has them: ids hashed by redaction stay hashed.
//!
//! Self-telemetry: `bizpilot_board_viewers` (gauge, open event streams), `bizpilot_board_ticks_total`.
//!
//! No configuration: the board follows the admin server (`service.telemetry.metrics.address`).

pub mod render;
pub mod snapshot;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bizpilot_core::ApiRegistry;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value as Json, json};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use snapshot::{Figures, Point, Ring};

const CSS: &str = include_str!("assets/board.css");
const JS: &str = include_str!("assets/board.js");
/// One point per tick for one hour.
const RING_POINTS: usize = 3600;
const TICK: Duration = Duration::from_secs(1);
/// Rows the CSV export pages through at most.
const CSV_MAX_ROWS: usize = 200_000;

/// One tick: what every viewer gets.
#[derive(Debug, Default)]
pub struct Tick {
    pub seq: u64,
    pub figures: Figures,
    pub point: Option<Point>,
    /// The sections' HTML fragments, by element id.
    pub sections: Vec<(&'static str, String)>,
    /// The tick as one server-sent event, serialized once.
    pub event: Bytes,
}

/// The board's shared state.
#[derive(Clone)]
pub struct Board {
    api: ApiRegistry,
    tick: watch::Receiver<Arc<Tick>>,
    ring: Arc<Mutex<Ring>>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Renders every section of `f`.
fn sections(f: &Figures, p: Option<&Point>) -> Vec<(&'static str, String)> {
    let mut s = vec![
        ("status", render::status(f)),
        ("now-body", render::now(f, p)),
        ("customers-body", render::customers(f)),
        ("kpi-body", render::kpis(f)),
        ("health-body", render::health(f)),
    ];
    s.push(("capacity-body", render::capacity(f).unwrap_or_default()));
    s
}

fn build_tick(seq: u64, f: Figures, point: Point) -> Tick {
    let sections = sections(&f, Some(&point));
    let data = json!({
        "seq": seq,
        "sections": sections.iter().map(|(k, v)| (k.to_string(), Json::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "point": point.compact(),
        "currency": point.currency,
        "capacity": f.plan.is_some(),
    });
    let mut event = format!("event: tick\nid: {seq}\ndata: ");
    event.push_str(&data.to_string());
    event.push_str("\n\n");
    Tick {
        seq,
        figures: f,
        point: Some(point),
        sections,
        event: Bytes::from(event),
    }
}

impl Board {
    /// Starts the snapshot task; it stops when `shutdown` is cancelled.
    pub fn start(api: ApiRegistry, metrics: PrometheusHandle, shutdown: CancellationToken) -> Board {
        let (tx, rx) = watch::channel(Arc::new(Tick::default()));
        let ring = Arc::new(Mutex::new(Ring::new(RING_POINTS)));
        let board = Board {
            api: api.clone(),
            tick: rx,
            ring: ring.clone(),
        };
        tokio::spawn(async move {
            let ticks = metrics::counter!("bizpilot_board_ticks_total");
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut operation = None;
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                seq += 1;
                let f = snapshot::read(&api, &metrics.render(), &mut operation, wall_ms());
                let point = ring.lock().unwrap_or_else(PoisonError::into_inner).push(&f);
                let _ = tx.send(Arc::new(build_tick(seq, f, point)));
                ticks.increment(1);
            }
        });
        board
    }

    /// The routes of the board, to merge into the admin server's router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/board", get(page))
            .route("/board/", get(page))
            .route("/board/events", get(events))
            .route("/board/snapshot.json", get(snapshot_json))
            .route("/board/customers.csv", get(customers_csv))
            .route(
                "/board/board.js",
                get(|| async { asset("text/javascript; charset=utf-8", JS) }),
            )
            .route(
                "/board/board.css",
                get(|| async { asset("text/css; charset=utf-8", CSS) }),
            )
            .with_state(self)
    }

    fn ring_json(&self) -> Json {
        let r = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "points": r.points().map(Point::compact).collect::<Vec<_>>(),
            "currency": r.points().last().map(|p| p.currency.clone()),
            "evicted": r.evicted,
        })
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The whole page, rendered on the server from the latest tick.
async fn page(State(b): State<Board>) -> Response {
    let tick = b.tick.borrow().clone();
    let owned;
    let secs: &[(&str, String)] = if tick.seq == 0 {
        owned = sections(&tick.figures, None);
        &owned
    } else {
        &tick.sections
    };
    let section = |id: &str| {
        secs.iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let capacity = section("capacity-body");
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>bizpilot · business board</title><link rel="stylesheet" href="/board/board.css"><link rel="icon" href="data:,">
</head><body>
<a class="skip" href="#now">Skip to the figures</a>
<header class="top"><div class="brand"><span class="logo" aria-hidden="true">◆</span> bizpilot <span class="dim">business board</span></div>
<div id="status" class="status">{status}</div>
<div class="live" id="live" role="status" aria-live="polite"><span class="dot" aria-hidden="true"></span><span id="live-text">snapshot</span></div>
<nav aria-label="Sections"><a href="#now">Now</a><a href="#charts">Last hour</a><a href="#customers">Who is affected</a><a href="#kpi">24-hour KPI</a><a href="#capacity" id="nav-capacity"{cap_hidden}>Capacity</a><a href="#health">Pipeline health</a></nav></header>
<main>
<section id="now" aria-labelledby="now-h"><h2 id="now-h">Now</h2><div id="now-body">{now}</div></section>
<section id="charts" aria-labelledby="charts-h"><div class="section-head"><h2 id="charts-h">The last hour</h2>
<form class="picker" id="picker" aria-label="Time range (event time)"><label for="range">Range</label>
<select id="range" name="range"><option value="300">last 5 min</option><option value="900">last 15 min</option><option value="3600" selected>last hour</option><option value="custom">custom (event time)…</option></select>
<span id="custom" hidden><label for="from">from</label> <input type="datetime-local" id="from" step="1"> <label for="to">to</label> <input type="datetime-local" id="to" step="1"> <span class="dim">UTC</span></span></form></div>
<noscript><p class="empty">Charts need JavaScript; the figures above and below are complete without it.</p></noscript>
<div class="charts"><figure><figcaption>Revenue per minute <span class="dim" id="rev-unit"></span></figcaption><div class="chart" id="chart-revenue" role="img" aria-label="Revenue per minute over event time"></div></figure>
<figure><figcaption>Failed operations per minute</figcaption><div class="chart" id="chart-failed" role="img" aria-label="Failed operations per minute over event time"></div></figure>
<figure><figcaption>Revenue at risk <span class="key risk">■</span> and recovered <span class="key rec">■</span> (cumulative)</figcaption><div class="chart" id="chart-risk" role="img" aria-label="Revenue at risk and recovered over event time"></div></figure></div></section>
<section id="customers" aria-labelledby="customers-h"><div class="section-head"><h2 id="customers-h">Who is affected</h2>
<div class="tools"><label for="tier">Tier</label> <select id="tier"><option value="">all tiers</option></select>
<a class="button" id="csv" href="/board/customers.csv" download>Export CSV</a></div></div>
<div id="customers-body">{customers}</div></section>
<section id="kpi" aria-labelledby="kpi-h"><h2 id="kpi-h">The 24-hour KPI</h2><div id="kpi-body">{kpi}</div></section>
<section id="capacity" aria-labelledby="capacity-h"{cap_hidden}><h2 id="capacity-h">Capacity</h2><div id="capacity-body">{capacity}</div></section>
<section id="health" aria-labelledby="health-h"><h2 id="health-h">Pipeline health</h2><div id="health-body">{health}</div></section>
</main>
<footer class="dim">Figures from <a href="/api/v1/impact">/api/v1/impact</a>, <a href="/api/v1/incidents">/api/v1/incidents</a>, <a href="/api/v1/kpi">/api/v1/kpi</a> and <a href="/metrics">/metrics</a>; updated every second.</footer>
<script src="/board/board.js" defer></script>
</body></html>
"##,
        status = section("status"),
        now = section("now-body"),
        customers = section("customers-body"),
        kpi = section("kpi-body"),
        health = section("health-body"),
        cap_hidden = if capacity.is_empty() { " hidden" } else { "" },
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        h,
    )
        .into_response()
}

/// Counts an open event stream for as long as it lives.
struct Viewer;

impl Viewer {
    fn new() -> Self {
        metrics::gauge!("bizpilot_board_viewers").increment(1.0);
        Viewer
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        metrics::gauge!("bizpilot_board_viewers").decrement(1.0);
    }
}

/// `GET /board/events`: the chart history once, then every tick (the same bytes for every viewer).
async fn events(State(b): State<Board>) -> Response {
    let mut rx = b.tick.clone();
    let mut first = String::from("retry: 2000\nevent: history\ndata: ");
    first.push_str(&b.ring_json().to_string());
    first.push_str("\n\n");
    let current = rx.borrow_and_update().event.clone();
    let mut queue = vec![current, Bytes::from(first)];
    queue.retain(|b| !b.is_empty());
    let stream = futures_util::stream::unfold((rx, queue, Viewer::new()), |(mut rx, mut queue, v)| async move {
        if let Some(next) = queue.pop() {
            return Some((Ok::<Bytes, Infallible>(next), (rx, queue, v)));
        }
        rx.changed().await.ok()?;
        let next = rx.borrow_and_update().event.clone();
        Some((Ok(next), (rx, queue, v)))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /board/snapshot.json`: the latest tick's figures and chart point.
async fn snapshot_json(State(b): State<Board>) -> Response {
    let t = b.tick.borrow().clone();
    let f = &t.figures;
    axum::Json(json!({
        "seq": t.seq,
        "operation": f.operation,
        "impact": f.impact,
        "incidents": f.incidents,
        "kpis": f.kpis.iter().map(|(k, a)| json!({"kpi": k, "at_risk": a})).collect::<Vec<_>>(),
        "plan": f.plan,
        "health": f.health,
        "point": t.point,
    }))
    .into_response()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `GET /board/customers.csv[?tier=gold]`: every affected customer of the board's operation, highest cart
/// value first, money as exact decimals.
async fn customers_csv(State(b): State<Board>, RawQuery(q): RawQuery) -> Response {
    let tier = q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("tier="))
        .map(|t| t.replace('+', " "))
        .filter(|t| !t.is_empty());
    let Some(op) = b.tick.borrow().figures.operation.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no business_impact figures yet\n").into_response();
    };
    let mut out = String::from(
        "customer,tier,cart_value,currency,items,item_count,failed_attempts,recovered,incident,failure_service,failure_message,time\n",
    );
    let mut offset = 0;
    while offset < CSV_MAX_ROWS {
        let page = snapshot::get(
            &b.api,
            "impact",
            &[
                ("operation", op.clone()),
                ("limit", "1000".into()),
                ("offset", offset.to_string()),
            ],
        );
        let list = page
            .as_ref()
            .and_then(|p| p["customers"].as_array())
            .cloned()
            .unwrap_or_default();
        if list.is_empty() {
            break;
        }
        offset += list.len();
        for r in &list {
            if tier.as_deref().is_some_and(|t| r["tier"].as_str() != Some(t)) {
                continue;
            }
            let value = snapshot::money(&r["cart_value"]);
            let items: Vec<String> = r["items"]
                .as_array()
                .map(|it| {
                    it.iter()
                        .map(|i| format!("{} x{}", i["sku"].as_str().unwrap_or(""), i["quantity"]))
                        .collect()
                })
                .unwrap_or_default();
            let fields = [
                r["customer"].as_str().unwrap_or("").to_string(),
                r["tier"].as_str().unwrap_or("").to_string(),
                value.map(|m| m.amount_string()).unwrap_or_default(),
                value.map(|m| m.currency().as_str().to_string()).unwrap_or_default(),
                items.join("; "),
                r["item_count"].to_string(),
                r["failed_attempts"].to_string(),
                r["recovered"].to_string(),
                r["incident"].as_str().unwrap_or("").to_string(),
                r["failure"]["service"].as_str().unwrap_or("").to_string(),
                r["failure"]["status_message"].as_str().unwrap_or("").to_string(),
                r["time"].as_str().unwrap_or("").to_string(),
            ];
            out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"affected-customers.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}
