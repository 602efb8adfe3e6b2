//! Spans held in the join window, waiting for their order to appear in the state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bizpilot_core::Ack;

/// The resource a held span came with (shared by the spans held from it): the encoded fields of its
/// `ResourceSpans` but the scopes (`bizpilot_core::view::container_header`).
#[derive(Debug)]
pub(crate) struct ResHeader {
    pub header: Vec<u8>,
    /// Where the fields numbered after the scopes start in `header`.
    pub mid: usize,
    /// Which resource-conditioned rules matched this resource.
    pub mask: Vec<bool>,
}

/// The instrumentation scope a held span came with: the encoded fields of its `ScopeSpans` but the spans.
#[derive(Debug)]
pub(crate) struct ScopeHeader {
    pub header: Vec<u8>,
    /// Where the fields numbered after the spans start in `header`.
    pub mid: usize,
}

/// A span waiting for its order, kept encoded (its body, as the rules before the join left it): a few
/// hundred bytes in one allocation, where the decoded span took one per attribute.
#[derive(Debug)]
pub(crate) struct HeldSpan {
    pub res: Arc<ResHeader>,
    pub scope: Arc<ScopeHeader>,
    pub span: Vec<u8>,
    /// Whether the rules before the join changed it.
    pub changed: bool,
    /// The acknowledgements of the batch it came in: the source hears back only
    /// once this span, too, has been handed on.
    pub acks: Arc<Vec<Ack>>,
}

/// Held spans by order key, with their deadlines. Bounded by `max`.
#[derive(Debug)]
pub(crate) struct Holder {
    window: Duration,
    max: usize,
    spans: HashMap<u64, (Arc<str>, HeldSpan)>,
    by_key: HashMap<Arc<str>, Vec<u64>>,
    /// Deadlines in arrival order (hence in deadline order); entries of spans
    /// already released are skipped when reached.
    deadlines: VecDeque<(Instant, u64)>,
    next_id: u64,
}

impl Holder {
    pub fn new(window: Duration, max: usize) -> Self {
        Holder {
            window,
            max,
            spans: HashMap::new(),
            by_key: HashMap::new(),
            deadlines: VecDeque::new(),
            next_id: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether `extra` more spans fit.
    pub fn has_room(&self, extra: usize) -> bool {
        self.spans.len() + extra <= self.max
    }

    pub fn push(&mut self, key: &str, span: HeldSpan, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let key: Arc<str> = match self.by_key.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.by_key.entry(key.clone()).or_default().push(id);
        self.spans.insert(id, (key, span));
        self.deadlines.push_back((now + self.window, id));
    }

    /// Every span waiting for `key`.
    pub fn take_key(&mut self, key: &str) -> Vec<HeldSpan> {
        let Some(ids) = self.by_key.remove(key) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(|id| self.spans.remove(&id).map(|(_, s)| s))
            .collect()
    }

    fn forget(&mut self, id: u64) -> Option<HeldSpan> {
        let (key, span) = self.spans.remove(&id)?;
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_key.remove(&key);
            }
        }
        Some(span)
    }

    /// Spans whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<HeldSpan> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(s) = self.forget(id) {
                out.push(s);
            }
        }
        out
    }

    /// Every held span, in arrival order.
    pub fn take_all(&mut self) -> Vec<HeldSpan> {
        let mut out = Vec::with_capacity(self.spans.len());
        while let Some((_, id)) = self.deadlines.pop_front() {
            if let Some(s) = self.forget(id) {
                out.push(s);
            }
        }
        self.spans.clear();
        self.by_key.clear();
        out
    }

    /// The earliest deadline of a span still held.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if self.spans.contains_key(&id) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// The keys spans wait for.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.by_key.keys().cloned().collect()
    }
}
