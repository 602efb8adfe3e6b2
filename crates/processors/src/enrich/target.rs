//! What the rules and joins of the engine read and write on one item, in two representations:
//!
//! - [`Decoded`]: a decoded span or log record (`Vec<KeyValue>`), changed in place with
//!   `bizpilot_business::attrs`;
//! - [`Overlay`]: an encoded span, read through a zero-copy view of its attributes, with what the
//!   rules add or remove kept on the side and written out once at the end through a
//!   [`SpanEdit`] ([`bizpilot_core::Traces::try_rewrite_spans`]).
//!
//! Both implement [`Target`] with the same semantics (first occurrence wins when reading, `set`
//! replaces or appends, `delete` removes every occurrence), so a rule gives the same result on either
//! path; a later rule sees what an earlier one wrote. One difference, in attribute *order* only: when a
//! span's own attribute is replaced (`overwrite: true`, or a rename onto an existing key), the decoded
//! path replaces it in place, the overlay removes it and appends the new value at the end.
//!
//! Attribute names are compiled into [`Key`]s: the name, and a slot in the engine's [`Vocab`] (every
//! name a rule, condition or join reads or writes). The overlay indexes a span's attributes by slot in one
//! pass, so a rule's lookups cost an array access instead of a scan of the attributes.

use std::borrow::Cow;

use bizpilot_business::attrs::{self, KeyValue, Value};
use bizpilot_business::lookup::LookupValue;
use bizpilot_core::pb;
use bizpilot_core::view::{self, Fields, SpanEdit, ValueRef, Wire};
use bizpilot_core::{Currency, Money, MoneyError};

use super::engine::Item;

/// A compiled attribute name.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    /// Index in the engine's [`Vocab`].
    pub slot: usize,
}

/// Every attribute name the engine reads or writes, each with a slot.
#[derive(Debug, Default)]
pub(crate) struct Vocab {
    names: Vec<String>,
    /// By name length: (the name's last 8 bytes, slot), for the lookup of a span's keys.
    by_len: Vec<Vec<(u64, usize)>>,
}

/// The last 8 bytes of a name (fewer for a shorter one), as a number: names of the same length
/// that differ mostly differ there (they share prefixes such as `demo.` and `business.`).
#[inline]
fn tail8(name: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = name.len().min(8);
    if let (Some(dst), Some(src)) = (b.get_mut(..n), name.get(name.len() - n..)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

impl Vocab {
    /// The key of `name`, adding it to the vocabulary if new.
    pub fn key(&mut self, name: &str) -> Key {
        let slot = match self.slot_of(name.as_bytes()) {
            Some(s) => s,
            None => {
                let s = self.names.len();
                self.names.push(name.to_string());
                if self.by_len.len() <= name.len() {
                    self.by_len.resize_with(name.len() + 1, Vec::new);
                }
                if let Some(v) = self.by_len.get_mut(name.len()) {
                    v.push((tail8(name.as_bytes()), s));
                }
                s
            }
        };
        Key {
            name: name.to_string(),
            slot,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The slot of an attribute name, if the engine knows it.
    #[inline]
    pub fn slot_of(&self, name: &[u8]) -> Option<usize> {
        let candidates = self.by_len.get(name.len())?;
        if candidates.is_empty() {
            return None;
        }
        let tail = tail8(name);
        candidates
            .iter()
            .find(|&&(t, s)| t == tail && (name.len() <= 8 || self.names.get(s).is_some_and(|n| n.as_bytes() == name)))
            .map(|&(_, s)| s)
    }

    fn name(&self, slot: usize) -> &str {
        self.names.get(slot).map(String::as_str).unwrap_or("")
    }
}

/// A value a rule or join writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NewValue<'v> {
    Str(&'v str),
    Int(i64),
    Value(&'v Value),
    Lookup(&'v LookupValue),
}

impl NewValue<'_> {
    fn to_value(self) -> Value {
        match self {
            NewValue::Str(s) => Value::StringValue(s.to_string()),
            NewValue::Int(i) => Value::IntValue(i),
            NewValue::Value(v) => v.clone(),
            NewValue::Lookup(l) => l.to_value(),
        }
    }

    /// Appends the encoded `AnyValue` body.
    fn encode(self, out: &mut Vec<u8>) {
        match self {
            NewValue::Str(s) => put_str_field(out, s),
            NewValue::Int(i) => {
                pb::put_key(out, 3, pb::VARINT);
                pb::put_varint(out, i as u64);
            }
            NewValue::Value(v) => view::encode_any_value(v, out),
            NewValue::Lookup(l) => match l {
                LookupValue::Str(s) => put_str_field(out, s),
                LookupValue::Int(i) => {
                    pb::put_key(out, 3, pb::VARINT);
                    pb::put_varint(out, *i as u64);
                }
                LookupValue::Double(d) => {
                    pb::put_key(out, 4, pb::FIXED64);
                    out.extend_from_slice(&d.to_bits().to_le_bytes());
                }
                LookupValue::Bool(b) => {
                    pb::put_key(out, 2, pb::VARINT);
                    out.push(u8::from(*b));
                }
            },
        }
    }
}

/// `string_value` (field 1) of an `AnyValue`.
fn put_str_field(out: &mut Vec<u8>, s: &str) {
    pb::put_len_field(out, 1, s.as_bytes());
}

/// The attributes (and name) of one item, as the rules see them.
pub(crate) trait Target {
    /// The span name; for a log record, its event name.
    fn name(&self) -> &str;
    /// The trace id (empty when none).
    fn trace_id(&self) -> &[u8];
    /// The value of `k` (first occurrence; `None` when absent or without a value).
    fn get(&self, k: &Key) -> Option<ValueRef<'_>>;
    /// Whether `k` is present, with or without a value.
    fn contains(&self, k: &Key) -> bool;
    /// Replaces the first `k` (dropping later ones) or appends it (`attrs::set`).
    fn set(&mut self, k: &Key, v: NewValue<'_>);
    /// Sets `to` to the value of `from` when `from` has one; returns whether it did.
    fn copy(&mut self, from: &Key, to: &Key) -> bool;
    /// Removes every `k`; returns whether there was one.
    fn delete(&mut self, k: &Key) -> bool;
    /// `attrs::rename`: moves `from` to `to` (keeping an existing `to` unless `overwrite`); `from` is
    /// removed either way.
    fn rename(&mut self, from: &Key, to: &Key, overwrite: bool);
}

/// A decoded span or log record.
pub(crate) struct Decoded<'x, I: Item>(pub &'x mut I);

impl<I: Item> Target for Decoded<'_, I> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn trace_id(&self) -> &[u8] {
        self.0.trace_id()
    }
    fn get(&self, k: &Key) -> Option<ValueRef<'_>> {
        bizpilot_core::span::attr_of(self.0.attributes(), &k.name)
    }
    fn contains(&self, k: &Key) -> bool {
        attrs::contains(self.0.attributes(), &k.name)
    }
    fn set(&mut self, k: &Key, v: NewValue<'_>) {
        attrs::set(self.0.attributes_mut(), &k.name, v.to_value());
    }
    fn copy(&mut self, from: &Key, to: &Key) -> bool {
        let a = self.0.attributes_mut();
        match attrs::get(a, &from.name).cloned() {
            Some(v) => {
                attrs::set(a, &to.name, v);
                true
            }
            None => false,
        }
    }
    fn delete(&mut self, k: &Key) -> bool {
        attrs::delete(self.0.attributes_mut(), &k.name).is_some()
    }
    fn rename(&mut self, from: &Key, to: &Key, overwrite: bool) {
        attrs::rename(self.0.attributes_mut(), &from.name, &to.name, overwrite);
    }
}

/// What the overlay knows of one attribute name.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The encoded value of the span's own first attribute of this name (a range of the span's bytes).
    orig: Option<(usize, usize)>,
    /// The span's own attributes of this name are removed.
    removed: bool,
    /// The value written by a rule (a range of the arena).
    added: Option<(usize, usize)>,
}

/// Where a value is.
#[derive(Debug, Clone, Copy)]
enum Src {
    Span(usize, usize),
    Arena(usize, usize),
}

/// Buffers of the overlay, reused from span to span (allocated once per request).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    slots: Vec<Slot>,
    /// Slots changed for the current span (to reset).
    touched: Vec<usize>,
    /// Slots with an added value, in the order they were added.
    order: Vec<usize>,
    /// Encoded values written by rules.
    arena: Vec<u8>,
}

impl Scratch {
    pub fn new(vocab: &Vocab) -> Self {
        Scratch {
            slots: vec![Slot::default(); vocab.len()],
            touched: Vec::with_capacity(vocab.len()),
            order: Vec::new(),
            arena: Vec::with_capacity(256),
        }
    }

    /// The overlay of encoded span `raw` (its body): reads its name and indexes the attributes the
    /// engine knows, in one walk over the span's fields.
    pub fn overlay<'s>(&'s mut self, vocab: &'s Vocab, raw: &'s [u8]) -> Overlay<'s> {
        for &s in &self.touched {
            if let Some(x) = self.slots.get_mut(s) {
                *x = Slot::default();
            }
        }
        self.touched.clear();
        self.order.clear();
        self.arena.clear();
        let base = raw.as_ptr() as usize;
        let mut name = "";
        let mut trace_id: &[u8] = &[];
        for (tag, w, _) in Fields::new(raw) {
            let (9, Wire::Bytes(kv)) = (tag, w) else {
                match (tag, w) {
                    (5, Wire::Bytes(b)) => name = std::str::from_utf8(b).unwrap_or(""),
                    (1, Wire::Bytes(b)) => trace_id = b,
                    _ => {}
                }
                continue;
            };
            let (key, value) = view::split_key_value(kv);
            let Some(slot) = vocab.slot_of(key) else { continue };
            if let Some(s) = self.slots.get_mut(slot)
                && s.orig.is_none()
            {
                // An absent value reads as an empty one: both are "no value".
                let start = if value.is_empty() {
                    0
                } else {
                    (value.as_ptr() as usize).wrapping_sub(base)
                };
                s.orig = Some((start, start + value.len()));
                self.touched.push(slot);
            }
        }
        Overlay {
            vocab,
            name,
            trace_id,
            raw,
            s: self,
        }
    }
}

/// An encoded span with the changes the rules made so far (see the module doc).
pub(crate) struct Overlay<'s> {
    vocab: &'s Vocab,
    name: &'s str,
    trace_id: &'s [u8],
    raw: &'s [u8],
    s: &'s mut Scratch,
}

impl Overlay<'_> {
    fn slot(&self, k: &Key) -> Slot {
        self.s.slots.get(k.slot).copied().unwrap_or_default()
    }

    fn slot_mut(&mut self, k: &Key) -> Option<&mut Slot> {
        self.s.slots.get_mut(k.slot)
    }

    /// The current value of `k`, present or not, with where it is.
    fn source(&self, k: &Key) -> Option<Src> {
        let s = self.slot(k);
        match (s.added, s.orig) {
            (Some((a, b)), _) => Some(Src::Arena(a, b)),
            (None, Some((a, b))) if !s.removed => Some(Src::Span(a, b)),
            _ => None,
        }
    }

    fn bytes(&self, src: Src) -> &[u8] {
        match src {
            Src::Span(a, b) => self.raw.get(a..b).unwrap_or(&[]),
            Src::Arena(a, b) => self.s.arena.get(a..b).unwrap_or(&[]),
        }
    }

    /// Makes the arena range `value` the value of `k`: in place if a rule already wrote `k`, else
    /// appended (the span's own `k` removed).
    fn place(&mut self, k: &Key, value: (usize, usize)) {
        let slot = k.slot;
        let Some(s) = self.s.slots.get_mut(slot) else { return };
        if s.added.is_some() {
            s.added = Some(value);
            return;
        }
        if s.orig.is_some() {
            s.removed = true;
        }
        s.added = Some(value);
        self.s.order.push(slot);
        self.s.touched.push(slot);
    }

    /// Copies the value at `src` to `k`.
    fn set_from(&mut self, k: &Key, src: Src) {
        let start = self.s.arena.len();
        match src {
            Src::Span(a, b) => {
                let v = self.raw.get(a..b).unwrap_or(&[]);
                self.s.arena.extend_from_slice(v);
            }
            Src::Arena(a, b) => {
                if a <= b && b <= start {
                    self.s.arena.extend_from_within(a..b);
                }
            }
        }
        let end = self.s.arena.len();
        self.place(k, (start, end));
    }

    /// Writes the changes into `edit`: removals of the span's own attributes, then the added
    /// attributes in the order they were first added.
    pub fn emit(&self, edit: &mut SpanEdit) {
        for &slot in &self.s.touched {
            if let Some(s) = self.s.slots.get(slot)
                && s.orig.is_some()
                && s.removed
            {
                edit.remove(self.vocab.name(slot));
            }
        }
        for &slot in &self.s.order {
            if let Some(Slot {
                added: Some((a, b)), ..
            }) = self.s.slots.get(slot)
            {
                edit.add_raw(self.vocab.name(slot), self.s.arena.get(*a..*b).unwrap_or(&[]));
            }
        }
    }
}

impl Target for Overlay<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn trace_id(&self) -> &[u8] {
        self.trace_id
    }
    fn get(&self, k: &Key) -> Option<ValueRef<'_>> {
        let src = self.source(k)?;
        ValueRef::from_encoded(self.bytes(src))
    }
    fn contains(&self, k: &Key) -> bool {
        self.source(k).is_some()
    }
    fn set(&mut self, k: &Key, v: NewValue<'_>) {
        let start = self.s.arena.len();
        v.encode(&mut self.s.arena);
        let end = self.s.arena.len();
        self.place(k, (start, end));
    }
    fn copy(&mut self, from: &Key, to: &Key) -> bool {
        match self.source(from) {
            Some(src) if ValueRef::from_encoded(self.bytes(src)).is_some() => {
                self.set_from(to, src);
                true
            }
            _ => false,
        }
    }
    fn delete(&mut self, k: &Key) -> bool {
        let had = self.contains(k);
        let slot = k.slot;
        if let Some(s) = self.slot_mut(k) {
            if s.orig.is_some() {
                s.removed = true;
            }
            if s.added.take().is_some() {
                self.s.order.retain(|&x| x != slot);
            }
        }
        had
    }
    fn rename(&mut self, from: &Key, to: &Key, overwrite: bool) {
        if from.name == to.name {
            return;
        }
        let Some(src) = self.source(from) else { return };
        let has_value = ValueRef::from_encoded(self.bytes(src)).is_some();
        self.delete(from);
        if self.contains(to) && !overwrite {
            return;
        }
        if has_value {
            self.set_from(to, src);
        } else {
            // As `attrs::rename`: a value-less attribute becomes `to` with an empty value, at the end.
            self.delete(to);
            let at = self.s.arena.len();
            self.place(to, (at, at));
        }
    }
}

/// An int, a string holding one, or an integral double (as `amount::money_from_units_nanos` reads them).
fn int_of(v: &ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Int(i) => Some(*i),
        ValueRef::Str(s) => s.trim().parse().ok(),
        ValueRef::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
        _ => None,
    }
}

/// Money from a `units` and an optional `nanos` value (as `amount::money_from_units_nanos`).
pub(crate) fn money_from_units_nanos(
    units: &ValueRef<'_>,
    nanos: Option<&ValueRef<'_>>,
    currency: Currency,
) -> Result<Money, MoneyError> {
    let u = int_of(units).ok_or_else(|| MoneyError::Amount(format!("units {units:?}")))?;
    let n = match nanos {
        Some(v) => int_of(v).ok_or_else(|| MoneyError::Amount(format!("nanos {v:?}")))?,
        None => 0,
    };
    let n = i32::try_from(n).map_err(|_| MoneyError::Amount(format!("nanos {n}")))?;
    Money::from_units_nanos(u, n, currency)
}

/// The value as text (`attrs::value_as_str`).
pub(crate) fn text<'a>(v: &ValueRef<'a>) -> Option<Cow<'a, str>> {
    v.as_text()
}

/// Attributes of a decoded list, for resource conditions.
pub(crate) fn decoded_get<'a>(a: &'a [KeyValue], key: &str) -> Option<ValueRef<'a>> {
    attrs::get(a, key).map(ValueRef::from_value)
}
