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

/// Acknowledgements a stateful stage holds until a checkpoint of its state holds their data (`order_kpi`):
/// [`hold`](Held::hold) those of each batch absorbed; [`seal`](Held::seal) when a checkpoint of the state as of now
/// begins; then [`release`](Held::release) once that checkpoint is written (delivered), or
/// [`reopen`](Held::reopen) if it failed (held again, for the next checkpoint to cover). Whatever is still held
/// when it is dropped is failed: its data is in no checkpoint, and its source may send it again.
#[derive(Debug, Default)]
pub struct Held {
    /// Absorbed since the checkpoint in progress began (or since the last one).
    open: Vec<Ack>,
    /// Covered by the checkpoint in progress.
    sealed: Vec<Ack>,
}

impl Held {
    /// Holds `acks` until a checkpoint that begins after this call is written.
    pub fn hold(&mut self, acks: impl IntoIterator<Item = Ack>) {
        self.open.extend(acks);
    }

    /// Acknowledgements held (sealed or not).
    pub fn len(&self) -> usize {
        self.open.len() + self.sealed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A checkpoint of the state as of now begins: it covers everything held so far.
    pub fn seal(&mut self) {
        self.sealed.append(&mut self.open);
    }

    /// The checkpoint begun at the last [`seal`](Held::seal) is written: its acknowledgements are released.
    /// Returns how many.
    pub fn release(&mut self) -> usize {
        let n = self.sealed.len();
        self.sealed.clear();
        n
    }

    /// The checkpoint begun at the last [`seal`](Held::seal) failed: what it covered stays held.
    pub fn reopen(&mut self) {
        let later = std::mem::take(&mut self.open);
        self.open = std::mem::take(&mut self.sealed);
        self.open.extend(later);
    }

    /// Fails and lets go of everything held (no checkpoint will hold it). Returns how many.
    pub fn fail_all(&mut self) -> usize {
        let n = self.len();
        for a in self.sealed.drain(..).chain(self.open.drain(..)) {
            a.fail();
        }
        n
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.fail_all();
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

    #[tokio::test]
    async fn held_acks_wait_for_the_checkpoint_that_covers_them() {
        let (a, mut a_rx) = Ack::channel();
        let (b, b_rx) = Ack::channel();
        let mut held = Held::default();
        held.hold([a]);
        held.seal();
        // Absorbed while the checkpoint is written: not covered by it.
        held.hold([b]);
        assert_eq!(held.len(), 2);
        assert!(a_rx.try_recv().is_err(), "held until the checkpoint is written");
        // That checkpoint failed: `a` waits for the next one, with `b`.
        held.reopen();
        assert!(a_rx.try_recv().is_err());
        held.seal();
        assert_eq!(held.release(), 2);
        assert!(held.is_empty());
        assert_eq!(a_rx.await.ok(), Some(Delivery::Delivered));
        assert_eq!(b_rx.await.ok(), Some(Delivery::Delivered));
    }

    #[tokio::test]
    async fn held_acks_dropped_without_a_checkpoint_fail() {
        let (a, a_rx) = Ack::channel();
        let (b, b_rx) = Ack::channel();
        let mut held = Held::default();
        held.hold([a]);
        held.seal();
        held.hold([b]);
        drop(held);
        assert_eq!(a_rx.await.ok(), Some(Delivery::Failed));
        assert_eq!(b_rx.await.ok(), Some(Delivery::Failed));
    }
}
