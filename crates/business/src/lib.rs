//! bizpilot's business domain, shared by the business components (the
//! `business_state` and `lookup` extensions, the `business_events` exporter,
//! the `enrich` and `redaction` processors):
//!
//! - [`event`]: [`BusinessEvent`]s read from OTLP log records that name an event
//!   (`event_name`, or the `event.name` attribute), with configurable field names ([`EventMapping`]);
//! - [`context`]: [`OrderContext`] and [`CustomerContext`], folded from events in any order;
//! - [`state`]: the bounded keyed state (order id → order, customer id → customer)
//!   with LRU-by-update eviction, TTL, counters and key-arrival notifications;
//! - [`lookup`]: reference tables from CSV/JSON/YAML files, reloaded atomically on change;
//! - [`hash`]: HMAC-SHA256 keyed hashing of identifiers for redaction;
//! - [`attrs`] and [`amount`]: helpers over OTLP attribute lists, and exact money from
//!   attribute values (strings, `units`+`nanos`, doubles through their shortest decimal form).
//!
//! Money is always [`bizpilot_core::Money`]: exact, never `f64` arithmetic.
#![forbid(unsafe_code)]

pub mod amount;
pub mod attrs;
pub mod changelog;
pub mod checkpoint;
pub mod context;
pub mod event;
pub mod hash;
pub mod lookup;
pub mod state;

pub use context::{CustomerContext, OrderContext, OrderSummary, TraceLink};
pub use event::{BusinessEvent, EventError, EventKind, EventMapping, LineItem};
pub use hash::{HashKeyError, KeyedHasher};
pub use lookup::{Lookup, LookupError, LookupStats, LookupTable, LookupValue, ReloadOutcome, Row, TableFormat};
pub use state::{Applied, BusinessState, KeyedStore, StateConfig, StoreStats, trace_key};
