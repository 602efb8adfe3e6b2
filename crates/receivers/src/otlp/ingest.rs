//! What both transports share: handing a parsed payload to the pipeline, bearer
//! authentication, self-telemetry and rate-limited logging.

use bizpilot_core::telemetry::ReceiverTelemetry;
use bizpilot_core::{Ack, Batch, Delivery, Output, Payload, ReceiverOutput, Refusal, Signal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a refused client is told to wait before retrying.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The receiver's outputs per signal and the counters of one transport.
pub(crate) struct Ingest {
    outputs: [Option<Output>; 3],
    wait: Duration,
    /// `wait_for_delivery`: how long a request waits for its acknowledgement before the answer.
    delivery: Option<Duration>,
    pub(crate) telemetry: ReceiverTelemetry,
    pub(crate) id: String,
    refusal_log: LogLimit,
    bad_request_log: LogLimit,
    /// Cancelled when the shutdown grace period is over: requests still waiting for room give up.
    hard_stop: CancellationToken,
}

fn idx(s: Signal) -> usize {
    match s {
        Signal::Traces => 0,
        Signal::Metrics => 1,
        Signal::Logs => 2,
    }
}

impl Ingest {
    pub(crate) fn new(
        id: &str,
        transport: &'static str,
        output: &ReceiverOutput,
        wait: Duration,
        delivery: Option<Duration>,
        hard_stop: CancellationToken,
    ) -> Self {
        Self {
            outputs: Signal::ALL.map(|s| output.get(s).cloned()),
            wait,
            delivery,
            telemetry: ReceiverTelemetry::new(id, transport),
            id: id.to_string(),
            refusal_log: LogLimit::new(),
            bad_request_log: LogLimit::new(),
            hard_stop,
        }
    }

    /// The output of `signal`, if a pipeline of that signal uses this receiver.
    pub(crate) fn output(&self, signal: Signal) -> Option<&Output> {
        self.outputs.get(idx(signal)).and_then(Option::as_ref)
    }

    /// Hands `payload` to the pipeline, waiting at most `backpressure_wait` for room.
    /// Empty payloads are accepted without being forwarded.
    pub(crate) async fn push(&self, output: &Output, payload: Payload) -> Result<(), Refusal> {
        let signal = payload.signal();
        let items = payload.items();
        if items == 0 {
            return Ok(());
        }
        let (batch, delivered) = match self.delivery {
            None => (Batch::new(payload), None),
            Some(timeout) => {
                let (ack, rx) = Ack::channel();
                (Batch::with_ack(payload, ack), Some((rx, timeout)))
            }
        };
        let mut sent = tokio::select! {
            r = output.send_with_deadline(batch, self.wait) => r,
            () = self.hard_stop.cancelled() => Err(Refusal::ShuttingDown),
        };
        // `wait_for_delivery`: answer once every consumer confirmed (the acknowledgement fires when the
        // last holder of the batch lets go), so a client is never told "accepted" for data a crash loses.
        if let (Ok(()), Some((rx, timeout))) = (&sent, delivered) {
            sent = tokio::select! {
                r = tokio::time::timeout(timeout, rx) => match r {
                    Ok(Ok(Delivery::Delivered)) => Ok(()),
                    Ok(Ok(Delivery::Failed)) => Err(Refusal::NotDelivered("a component downstream failed it".into())),
                    Ok(Err(_)) => Err(Refusal::NotDelivered("the pipeline dropped it unconfirmed".into())),
                    Err(_) => Err(Refusal::NotDelivered(format!("not confirmed within {timeout:?}"))),
                },
                () = self.hard_stop.cancelled() => Err(Refusal::ShuttingDown),
            };
        }
        match sent {
            Ok(()) => {
                self.telemetry.accepted(signal, items);
                Ok(())
            }
            Err(r) => {
                self.telemetry.refusal(signal, items, &r);
                if self.refusal_log.allow() {
                    tracing::warn!(receiver = %self.id, %signal, items, reason = r.reason(), "refused data: {r} (the client may retry; further refusals are logged at debug for 10s)");
                } else {
                    tracing::debug!(receiver = %self.id, %signal, items, reason = r.reason(), "refused data: {r}");
                }
                Err(r)
            }
        }
    }

    /// Counts and logs a request that could not be read.
    pub(crate) fn bad_request(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.telemetry.bad_request(reason);
        if reason != "unauthenticated" && self.bad_request_log.allow() {
            tracing::warn!(receiver = %self.id, reason, "rejected request: {detail} (further rejections are logged at debug for 10s)");
        } else {
            tracing::debug!(receiver = %self.id, reason, "rejected request: {detail}");
        }
    }
}

/// Allows one event per period: the first of a flood is logged loudly, the rest quietly.
pub(crate) struct LogLimit {
    start: Instant,
    /// Milliseconds since `start` of the last allowed event, `u64::MAX` for never.
    last: AtomicU64,
}

const LOG_PERIOD_MS: u64 = 10_000;

impl LogLimit {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(u64::MAX),
        }
    }

    pub(crate) fn allow(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < LOG_PERIOD_MS {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// A static bearer token that requests must present.
pub(crate) struct BearerAuth(bizpilot_core::auth::BearerToken);

impl BearerAuth {
    pub(crate) fn new(token: &str) -> Self {
        Self(bizpilot_core::auth::BearerToken::new(token))
    }

    /// Whether `headers` carry `authorization: Bearer <token>`.
    pub(crate) fn check(&self, headers: &http::HeaderMap) -> bool {
        self.0
            .accepts(headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limit_allows_one_per_period() {
        let l = LogLimit::new();
        assert!(l.allow());
        assert!(!l.allow());
        assert!(!l.allow());
    }

    #[test]
    fn bearer() {
        let a = BearerAuth::new("s3cret");
        let mut h = http::HeaderMap::new();
        assert!(!a.check(&h));
        h.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(a.check(&h));
        h.insert(http::header::AUTHORIZATION, "bearer s3cret".parse().unwrap());
        assert!(a.check(&h));
        h.insert(http::header::AUTHORIZATION, "Bearer s3creT".parse().unwrap());
        assert!(!a.check(&h));
        h.insert(http::header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!a.check(&h));
        h.insert(http::header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert!(!a.check(&h));
    }
}
