//! End-to-end acknowledgements.
//!
//! A source that needs to know when its data is safely handed on (the Kafka
//! receiver, before committing an offset) attaches an [`Ack`] to the batch it
//! sends. Every copy of the batch (fan-out to several exporters, merges in the
//! batch processor) holds a reference; when the last one is dropped, the
//! callback runs once with [`Delivery::Delivered`], or with
//! [`Delivery::Failed`] if any holder called [`Ack::fail`] (an exporter that
//! gave up, a processor that could not handle it).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Final outcome of acknowledged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every consumer handled the data (exported, aggregated, or deliberately dropped by a filter).
    Delivered,
    /// At least one consumer failed permanently.
    Failed,
}

type Callback = Box<dyn FnOnce(Delivery) + Send>;

struct Inner {
    failed: AtomicBool,
    callback: Mutex<Option<Callback>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let outcome = if self.failed.load(Ordering::Acquire) {
            Delivery::Failed
        } else {
            Delivery::Delivered
        };
        // `get_mut` needs no locking: we are the last owner.
        let cb = match self.callback.get_mut() {
            Ok(cb) => cb.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(cb) = cb {
            cb(outcome);
        }
    }
}

/// A shared acknowledgement handle. Cheap to clone.
#[derive(Clone)]
pub struct Ack(Arc<Inner>);

impl Ack {
    /// An acknowledgement that runs `callback` once, when the last copy is dropped.
    pub fn new(callback: impl FnOnce(Delivery) + Send + 'static) -> Self {
        Ack(Arc::new(Inner {
            failed: AtomicBool::new(false),
            callback: Mutex::new(Some(Box::new(callback))),
        }))
    }

    /// An acknowledgement whose outcome arrives on the returned receiver.
    pub fn channel() -> (Self, tokio::sync::oneshot::Receiver<Delivery>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Ack::new(move |d| {
                let _ = tx.send(d);
            }),
            rx,
        )
    }

    /// Marks the data as failed; the outcome is reported when the last copy is dropped.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack")
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .field("holders", &Arc::strong_count(&self.0))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivered_when_last_copy_drops() {
        let (ack, rx) = Ack::channel();
        let a2 = ack.clone();
        drop(ack);
        drop(a2);
        assert_eq!(rx.await.ok(), Some(Delivery::Delivered));
    }

    #[tokio::test]
    async fn any_failure_wins() {
        let (ack, rx) = Ack::channel();
        let a2 = ack.clone();
        a2.fail();
        drop(a2);
        drop(ack);
        assert_eq!(rx.await.ok(), Some(Delivery::Failed));
    }
}
