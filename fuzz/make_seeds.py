#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small, hand-made inputs: valid requests of
every signal, the refusals the receivers must make, and broken bytes). Rerun after changing it:
`python3 fuzz/make_seeds.py`. Crash reproducers found by the fuzzer are added next to the seeds
by hand (as `crash-*`) and stay."""
import json, os, struct, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def key(tag, wt): return varint(tag << 3 | wt)
def ld(tag, payload):
    if isinstance(payload, str): payload = payload.encode()
    return key(tag, 2) + varint(len(payload)) + payload
def vi(tag, n): return key(tag, 0) + varint(n)
def f64(tag, n): return key(tag, 1) + struct.pack("<Q", n)
def f32(tag, n): return key(tag, 5) + struct.pack("<I", n)
def dbl(tag, x): return key(tag, 1) + struct.pack("<d", x)

def anyv(v):
    if isinstance(v, bool): return vi(2, int(v))
    if isinstance(v, int): return vi(3, v)
    if isinstance(v, float): return dbl(4, v)
    if isinstance(v, bytes): return ld(7, v)
    if isinstance(v, list): return ld(5, b"".join(ld(1, anyv(x)) for x in v))
    if isinstance(v, dict): return ld(6, b"".join(ld(1, kv(k, x)) for k, x in v.items()))
    return ld(1, v)
def kv(k, v): return ld(1, k) + ld(2, anyv(v))
def attrs(tag, d): return b"".join(ld(tag, kv(k, v)) for k, v in d.items())

def nested(levels, kvlist=True):
    v = "leaf"
    for _ in range(levels - 1):
        v = {"k": v} if kvlist else [v]
    return v

def span(name, trace=b"\x01" * 16, sid=b"\x02" * 8, parent=b"", a=None, error=False, links=b""):
    s = ld(1, trace) + ld(2, sid) + (ld(4, parent) if parent else b"") + ld(5, name) + vi(6, 2)
    s += f64(7, 1735689600000000000) + f64(8, 1735689600250000000)
    s += attrs(9, a or {})
    if error: s += ld(15, ld(2, "payment declined") + vi(3, 2))
    return s + links

def traces(spans, service="checkout"):
    res = ld(1, attrs(1, {"service.name": service}))
    ss = ld(1, ld(1, "scope")) + b"".join(ld(2, s) for s in spans)
    return ld(1, res + ld(2, ss))

def logs(records):
    sl = b"".join(ld(2, r) for r in records)
    return ld(1, ld(1, attrs(1, {"service.name": "shop"})) + ld(2, sl))

def log_record(body, a=None, trace=b"", sid=b""):
    r = f64(1, 1735689600000000000) + vi(2, 9) + ld(3, "INFO") + ld(5, anyv(body)) + attrs(6, a or {})
    if trace: r += ld(9, trace)
    if sid: r += ld(10, sid)
    return r

def metrics_sum(points):
    dps = b"".join(ld(1, attrs(7, {"tier": "gold"}) + f64(3, 1735689600000000000) + dbl(4, p)) for p in points)
    m = ld(1, "orders") + ld(3, "1") + ld(7, dps + vi(2, 2) + vi(3, 1))
    return ld(1, ld(2, ld(2, m)))

def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    with open(os.path.join(d, name), "wb") as f: f.write(data)

demo_attrs = {"user.id": "c-42", "demo.order.id": "o-1", "demo.order.amount": 123.45,
              "demo.user_context.selected_currency": "EUR", "demo.order.items.count": 3}
pb = {
    "trace_one": traces([span("oteldemo.CheckoutService/PlaceOrder", a=demo_attrs)]),
    "trace_error": traces([span("grpc.oteldemo.PaymentService/Charge", a={"demo.payment.amount": "19.99"}, error=True)]),
    "trace_two_scopes": traces([span("a"), span("b", parent=b"\x02" * 8)]) + traces([span("c")], service="payment"),
    "trace_kinds_of_values": traces([span("v", a={"s": "x", "b": True, "i": -7, "d": 1.5, "by": b"\x00\x01",
                                                 "arr": [1, "two", 3.0], "map": {"k": "v", "n": {"m": 1}}})]),
    "trace_empty_ids": traces([span("noid", trace=b"", sid=b"")]),
    "trace_id_15": traces([span("short", trace=b"\x01" * 15)]),
    "trace_id_17": traces([span("long", trace=b"\x01" * 17)]),
    "span_id_7": traces([span("short", sid=b"\x02" * 7)]),
    "parent_9": traces([span("p", parent=b"\x03" * 9)]),
    "link_bad": traces([span("l", links=ld(13, ld(1, b"\x01" * 16) + ld(2, b"\x02" * 9)))]),
    "nested_kvlist_25": traces([span("deep", a={"deep": nested(25)})]),
    "nested_kvlist_26": traces([span("deep", a={"deep": nested(26)})]),
    "nested_array_25": traces([span("deep", a={"deep": nested(25, False)})]),
    "nested_array_26": traces([span("deep", a={"deep": nested(26, False)})]),
    "dup_fields": traces([span("first") + ld(5, "second") + ld(15, vi(3, 1)) + ld(15, ld(2, "m"))]),
    "dup_value": traces([ld(1, b"\x01" * 16) + ld(9, ld(1, "k") + ld(2, anyv("a")) + ld(2, anyv(5)))]),
    "unknown_fields": traces([span("u") + vi(30, 5) + ld(31, "x") + f32(29, 7)]),
    "logs_event": logs([log_record("order placed", {"event.name": "order.placed", "order.id": "o-1"},
                                   b"\x01" * 16, b"\x02" * 8)]),
    "logs_bad_trace": logs([log_record("x", trace=b"\x01" * 15)]),
    "logs_deep_body": logs([log_record(nested(25))]),
    "metrics_sum": metrics_sum([1.0, 2.5, 3.0]),
    "empty": b"",
    "truncated": traces([span("t", a=demo_attrs)])[:-7],
    "bad_utf8": ld(1, ld(2, ld(2, ld(1, b"\x01" * 16) + ld(5, b"\xff\xfe")))),
    "huge_length": key(1, 2) + varint(1 << 40) + b"abc",
    "group": key(1, 3) + key(1, 4),
    "garbage": b"this is not protobuf at all",
    "varint_11_bytes": key(1, 0) + b"\xff" * 10 + b"\x01",
}
for target in ("otlp_protobuf", "view_walk", "view_equivalence"):
    for name, data in pb.items():
        write(target, name, data)

def jspan(name, trace="01" * 16, sid="02" * 8, a=None, status=None):
    s = {"traceId": trace, "spanId": sid, "name": name, "kind": 2,
         "startTimeUnixNano": "1735689600000000000", "endTimeUnixNano": 1735689600250000000,
         "attributes": [{"key": k, "value": v} for k, v in (a or {}).items()]}
    if status: s["status"] = status
    return s
def jtraces(spans):
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
                                          "scopeSpans": [{"scope": {"name": "s"}, "spans": spans}]}]})
def jnested(levels, kvlist=True):
    v = {"stringValue": "leaf"}
    for _ in range(levels - 1):
        v = {"kvlistValue": {"values": [{"key": "k", "value": v}]}} if kvlist else {"arrayValue": {"values": [v]}}
    return v
js = {
    "one.json": jtraces([jspan("oteldemo.CheckoutService/PlaceOrder", a={"user.id": {"stringValue": "c-1"},
        "demo.order.amount": {"doubleValue": 12.5}, "n": {"intValue": "42"}})]),
    "error.json": jtraces([jspan("charge", status={"code": 2, "message": "declined"})]),
    "values.json": jtraces([jspan("v", a={"b": {"boolValue": True}, "by": {"bytesValue": "AAE="},
        "arr": {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "x"}]}}})]),
    "trace_30_hex.json": jtraces([jspan("x", trace="ab" * 15)]),
    "trace_34_hex.json": jtraces([jspan("x", trace="ab" * 17)]),
    "span_14_hex.json": jtraces([jspan("x", sid="cd" * 7)]),
    "odd_hex.json": jtraces([jspan("x", trace="abc")]),
    "empty_ids.json": jtraces([jspan("x", trace="", sid="")]),
    "nested_25.json": jtraces([jspan("x", a={"d": jnested(25)})]),
    "nested_26.json": jtraces([jspan("x", a={"d": jnested(26)})]),
    "nested_array_26.json": jtraces([jspan("x", a={"d": jnested(26, False)})]),
    "logs.json": json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "1", "body": {"stringValue": "hi"},
        "eventName": "order.placed", "attributes": [{"key": "order.id", "value": {"stringValue": "o-1"}}]}]}]}]}),
    "metrics.json": json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", "gauge": {"dataPoints": [{"asDouble": 1.5, "timeUnixNano": "5"}]}}]}]}]}),
    "empty_object.json": "{}",
    "null.json": "null",
    "truncated.json": jtraces([jspan("t")])[:-9],
    "big_int.json": jtraces([jspan("t", a={"i": {"intValue": "99999999999999999999"}})]),
    "wrong_types.json": '{"resourceSpans": {"scopeSpans": 5}}',
}
for name, data in js.items():
    write("otlp_json", name, data)

pipelines = os.path.join(os.path.dirname(ROOT), "..", "pipelines")
for f in sorted(os.listdir(pipelines)):
    if f.endswith(".yaml"):
        with open(os.path.join(pipelines, f), "rb") as src:
            write("config", f, src.read())
cfgs = {
    "typo.yaml": "receivers:\n  otlp:\n    protocol:\n      grpc:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n",
    "null_section.yaml": "receivers:\nexporters: ~\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n",
    "env.yaml": "receivers:\n  otlp:\n    protocols:\n      grpc: {endpoint: ${env:BIZPILOT_FUZZ}}\n      http: {endpoint: ${env:MISSING:-0.0.0.0:1}}\n"
                "exporters:\n  debug: {}\nservice:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [debug]}\n",
    "bad_env.yaml": "a: ${env:}\nb: ${env:X\nc: $${env:Y}\n",
    "anchors.yaml": "a: &a [1, 2]\nb: *a\nc: &c {x: *a, y: *a}\nd: [*c, *c]\n",
    "tabs.yaml": "receivers:\n\totlp: {}\n",
    "not_a_map.yaml": "- 1\n- 2\n",
    "empty.yaml": "",
    "deep.yaml": "a: " + "[" * 60 + "]" * 60 + "\n",
    "connectors.yaml": "connectors:\n  business_impact:\n    operations: [{name: checkout, span_name: x}]\n"
                       "service:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [business_impact]}\n",
}
for name, data in cfgs.items():
    write("config", name, data)

ev = {
    "placed.json": {"type": "order.placed", "time": "2025-01-01T00:00:01Z", "order_id": "o-1", "customer_id": "c-9",
                    "customer_tier": "gold", "amount": "59.97", "currency": "EUR",
                    "items": [{"sku": "A", "quantity": 3, "unit_price": "19.99"}]},
    "paid_unix.json": {"type": "order.paid", "time": 1735689601, "order_id": "o-1", "amount": 12.5},
    "shipped_nanos.json": {"type": "order.shipped", "time": 1735689601000000000, "order_id": "o-1"},
    "money_object.json": {"type": "order.placed", "order_id": "o-2", "amount": {"currency_code": "USD", "units": 10, "nanos": 500000000}},
    "no_type.json": {"order_id": "o-1"},
    "bad_money.json": {"type": "order.placed", "amount": "12,34"},
    "bad_time.json": {"type": "x", "time": "yesterday"},
    "huge_amount.json": {"type": "x", "amount": "99999999999999999999999999.99"},
    "negative_qty.json": {"type": "x", "items": [{"sku": "A", "quantity": -1, "unit_price": "1"}]},
    "extra_fields.json": {"type": "x", "note": {"deep": [1, 2, {"a": None}]}, "flag": True},
}
for name, data in ev.items():
    write("business_json", name, json.dumps(data))
write("business_json", "not_object.json", "[1,2,3]")
write("business_json", "garbage.json", "{\"type\": ")
write("business_json", "empty.json", "")

def money(cur, units, nanos): return ld(1, cur) + vi(2, units) + vi(3, nanos)
def event(t, order="o-1", customer="c-9", amount=None, items=b"", trace=b"", sid=b"", extra=b""):
    e = ld(1, t) + f64(2, 1735689601234000000) + ld(3, order) + ld(4, customer) + ld(5, "gold")
    if amount: e += ld(6, amount)
    e += items
    if trace: e += ld(9, trace)
    if sid: e += ld(10, sid)
    return e + extra
pbev = {
    "placed": event("order.placed", amount=money("EUR", 59, 970000000),
                    items=ld(8, ld(1, "A") + vi(2, 3) + ld(3, money("", 19, 990000000)))),
    "paid": event("order.paid", amount=money("USD", 12, 500000000), trace=b"\x01" * 16, sid=b"\x02" * 8),
    "shipped": event("order.shipped"),
    "attrs": event("order.placed", extra=ld(11, ld(1, "channel") + ld(2, "web")) + ld(11, ld(1, "coupon") + ld(2, "X"))),
    "short_trace": event("order.paid", trace=b"\x01" * 15, sid=b"\x02" * 8),
    "bad_currency": event("order.placed", amount=money("euro", 1, 0)),
    "bad_nanos": event("order.placed", amount=money("USD", 1, 2000000000)),
    "neg_mixed": event("order.placed", amount=money("USD", 1, -5)),
    "no_type": event(""),
    "unknown_fields": event("x", extra=vi(20, 1) + ld(21, "y")),
    "truncated": event("order.placed", amount=money("EUR", 1, 0))[:-3],
    "garbage": b"\xff\xff\xff\xff",
    "group": key(15, 3) * 20 + key(15, 4) * 20,
}
for name, data in pbev.items():
    write("business_protobuf", name, data)
print("seeds written under", ROOT)
