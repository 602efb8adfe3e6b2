//! The admin server (`service.telemetry.metrics.address`, default `localhost:8888`):
//!
//! | route | what | who may read it |
//! |---|---|---|
//! | `/metrics` | self-telemetry in Prometheus text format | anyone who reaches the address |
//! | `/healthz`, `/readyz` | liveness, readiness | anyone who reaches the address |
//! | `/`, `/board`, `/board/...` | the live business board (see the `board` module; it lists customers) | as `/api/v1/...` |
//! | `/api/v1/...` | the data API components register (impact records name customers) | loopback peers; others only with `authorization: Bearer <service.telemetry.metrics.auth.bearer_token>` |
//!
//! The default address is loopback, as the Collector's endpoints are. A manifest that moves the
//! address to `0.0.0.0` (for Prometheus to scrape `/metrics`) still keeps the data API from other
//! hosts unless it configures a token; Kubernetes probes use the `health_check` extension
//! (`:13133`) or `/healthz` / `/readyz`.
//!
//! Routes are built in [`router`]: open routes in `open`, routes whose answers name customers in
//! `data` (they go through [`data_guard`]). Add new routes to the matching group.

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bizpilot_core::auth::BearerToken;
use bizpilot_core::{ApiRegistry, ApiResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: PrometheusHandle,
    pub ready: Arc<AtomicBool>,
    /// The running service's readiness (`RunningService::readiness`), set once it has started: false while a
    /// component holds it down (a Kafka receiver restoring a partition's state) and once shutdown begins.
    pub service_ready: Arc<std::sync::OnceLock<Arc<AtomicBool>>>,
    pub api: ApiRegistry,
    /// `service.telemetry.metrics.auth.bearer_token`: what non-loopback peers of the data API must send.
    pub token: Option<BearerToken>,
}

fn parse_query(q: Option<String>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/api/v1/*`: answered by the HTTP API handlers components registered.
async fn api(State(s): State<AdminState>, Path(path): Path<String>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let query = parse_query(q);
    let resp = s
        .api
        .dispatch(&path, &query)
        .unwrap_or_else(|| ApiResponse::error(404, format!("no API at /api/v1/{path}")));
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(resp.body))
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let service = s.service_ready.get().is_some_and(|f| f.load(Ordering::Acquire));
    if s.ready.load(Ordering::Acquire) && service {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Who may read the data routes: loopback peers, and others that send the configured bearer token.
/// Without a token, other peers get 403 (and a hint), with one, 401 when they lack it.
async fn data_guard(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let authorized = s
        .token
        .as_ref()
        .is_some_and(|t| t.accepts(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes())));
    let loopback = peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback();
    if authorized || loopback {
        return next.run(req).await;
    }
    match &s.token {
        Some(_) => {
            metrics::counter!("bizpilot_admin_refused_total", "reason" => "unauthenticated").increment(1);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(serde_json::json!({"error": "missing or wrong bearer token"})),
            )
                .into_response()
        }
        None => {
            metrics::counter!("bizpilot_admin_refused_total", "reason" => "not_loopback").increment(1);
            (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({
                    "error": "the data API answers only loopback peers unless service.telemetry.metrics.auth.bearer_token is set"
                })),
            )
                .into_response()
        }
    }
}

/// The admin routes: `open` ones for everyone who reaches the address, `data` ones behind [`data_guard`].
pub fn router(state: AdminState) -> Router {
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let data = Router::new()
        .route("/api/v1/{*path}", get(api))
        .route_layer(middleware::from_fn_with_state(state.clone(), data_guard));
    open.merge(data).with_state(state)
}

/// Binds the admin address and serves until `shutdown` is cancelled.
pub async fn serve(address: &str, state: AdminState, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("service.telemetry.metrics.address: cannot bind {address}: {e}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && state.token.is_none() {
        tracing::info!(
            address = %local,
            "admin server on a non-loopback address without service.telemetry.metrics.auth: /api/v1 answers loopback peers only"
        );
    }
    // The board shows affected customers: it is guarded like the data API.
    let board = crate::board::Board::start(state.api.clone(), state.metrics.clone(), shutdown.clone())
        .router()
        .route_layer(middleware::from_fn_with_state(state.clone(), data_guard));
    let app = router(state.clone()).merge(board);
    // Histogram summaries need periodic upkeep.
    let upkeep = state.metrics.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = stop.cancelled() => break,
            }
        }
    });
    tokio::spawn(async move {
        let r = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(local)
}
