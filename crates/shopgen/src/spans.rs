//! Spans in the OpenTelemetry Demo's conventions, built from precomputed templates.
//!
//! Traces and their spans (SERVER spans but `charge`, INTERNAL; parent links as shown):
//!
//! | trace | spans |
//! |---|---|
//! | checkout attempt | frontend `POST /api/checkout` → checkout `oteldemo.CheckoutService/PlaceOrder` → { cart `oteldemo.CartService/GetCart`, payment `grpc.oteldemo.PaymentService/Charge` → payment `charge`, shipping `oteldemo.ShippingService/ShipOrder`, email `oteldemo.EmailService/SendOrderConfirmation` } (the last two only when the charge succeeded) |
//! | browse | frontend `GET /api/products/{productId}` → product-catalog `oteldemo.ProductCatalogService/GetProduct` |
//! | add to cart | frontend `POST /api/cart` → cart `oteldemo.CartService/AddItem` |
//!
//! Business attributes (with `attribute_prefix: app`, the names of the demo's `app.*` generation, pinned to demo 2.2.0:
//! `demo.` becomes `app.`, `user.id` `app.user.id`, `demo.user_context.selected_currency` `app.user.currency` and
//! `demo.user_context.loyalty_level` `app.loyalty.level`):
//!
//! | span | business attributes |
//! |---|---|
//! | `POST /api/checkout` | `user.id`, `session.id` |
//! | `PlaceOrder` | `user.id`, `demo.user_context.selected_currency`, `demo.order.id`, `demo.order.items.count`; on success also `demo.order.amount`, `demo.shipping.amount`, `demo.shipping.tracking.id` |
//! | `GetCart` | `user.id`, `demo.cart.items.count` |
//! | `grpc.oteldemo.PaymentService/Charge` | `user.id`, `demo.order.id`, `demo.payment.amount` (string) |
//! | `charge` | `demo.order.id`, `demo.payment.card_type`, `demo.payment.card_valid`, `demo.user_context.loyalty_level` (the customer tier); on success `demo.payment.charged` |
//! | `ShipOrder` | `demo.order.id`, `demo.shipping.amount`, `demo.shipping.tracking.id` |
//! | `SendOrderConfirmation` | `demo.order.id`, `demo.order.items.count` |
//! | `GET /api/products/{productId}` | `user.id`, `session.id`, `demo.product.id` |
//! | `GetProduct` | `demo.product.id`, `demo.product.name` |
//! | `POST /api/cart` | `user.id`, `session.id`, `demo.product.id`, `demo.product.quantity` |
//! | `AddItem` | `user.id`, `demo.product.id`, `demo.product.quantity` |
//!
//! As the demo's payment service (pinned to demo 3.0.0: `src/payment/index.js` sets only `demo.payment.amount` on
//! the gRPC server span; `src/payment/charge.js` opens the internal span `charge` with the card attributes and
//! the loyalty level), the tier is on `charge` only: a checkout or payment operation gets it from its trace (the
//! `business_impact` connector's `trace_context`) or from a customer lookup. Unlike the demo, whose loyalty level
//! is random per charge (and `gold` on a `paymentFailure`), it is the customer's tier, so the ground truth per tier
//! stays a property of the customer.
//!
//! A failed charge: `charge`, `Charge` and `PlaceOrder` have status ERROR (messages `"<outage message>"` (twice) and
//! `"failed to charge card: <outage message>"`) and `rpc.grpc.status_code` 2 (UNKNOWN) and 13 (INTERNAL); the
//! frontend span answers 500 (status ERROR, message `"Internal Server Error"`); there is no `demo.order.amount`
//! and no ShipOrder or SendOrderConfirmation span; Charge lasts about the outage's timeout.
//!
//! Departures from the demo, so that every span on the checkout path carries a business key: `demo.order.id` is
//! set on every attempt (failed ones too; retries of a cart reuse it) and also on Charge, `charge` and ShipOrder
//! (so a topology keyed by order id keeps the tier of `charge` with its order).
//! `demo.order.amount` and `demo.shipping.amount` are doubles as in the demo (or strings, see
//! [`crate::config::MoneyAttributes`]); `demo.order.amount` = `demo.payment.amount` = the order value.
//!
//! Spans are written directly as protobuf from pre-encoded templates (constant attributes, keys, names), in the
//! field order prost uses, so a span decodes to the same [`Span`] prost would have encoded to the same bytes.

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::sync::Arc;

use crate::catalog::{Catalog, Customer};
use crate::config::{AttributePrefix, MoneyAttributes, ShopConfig};
use crate::pb::{self, Key, attr_bool, attr_double, attr_int, attr_str};

/// Span names.
pub mod names {
    pub const FRONTEND_CHECKOUT: &str = "POST /api/checkout";
    pub const PLACE_ORDER: &str = "oteldemo.CheckoutService/PlaceOrder";
    pub const GET_CART: &str = "oteldemo.CartService/GetCart";
    /// The payment service's gRPC server span: the demo's Node instrumentation names it `grpc.<service>/<method>`
    /// (demo 3.0.0 src/payment/index.js); `oteldemo.PaymentService/Charge` is the checkout service's client span.
    pub const CHARGE: &str = "grpc.oteldemo.PaymentService/Charge";
    /// The payment service's internal span under [`CHARGE`] (demo 3.0.0 src/payment/charge.js), with the card
    /// attributes and the loyalty level.
    pub const CHARGE_INTERNAL: &str = "charge";
    pub const SHIP_ORDER: &str = "oteldemo.ShippingService/ShipOrder";
    pub const SEND_ORDER_CONFIRMATION: &str = "oteldemo.EmailService/SendOrderConfirmation";
    pub const FRONTEND_PRODUCT: &str = "GET /api/products/{productId}";
    pub const GET_PRODUCT: &str = "oteldemo.ProductCatalogService/GetProduct";
    pub const FRONTEND_CART: &str = "POST /api/cart";
    pub const ADD_ITEM: &str = "oteldemo.CartService/AddItem";
}

const ALL_NAMES: [&str; 11] = [
    names::FRONTEND_CHECKOUT,
    names::PLACE_ORDER,
    names::GET_CART,
    names::CHARGE,
    names::SHIP_ORDER,
    names::SEND_ORDER_CONFIRMATION,
    names::FRONTEND_PRODUCT,
    names::GET_PRODUCT,
    names::FRONTEND_CART,
    names::ADD_ITEM,
    names::CHARGE_INTERNAL,
];

/// The shop's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Service {
    Frontend,
    Checkout,
    Cart,
    Payment,
    Shipping,
    Email,
    ProductCatalog,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Frontend,
        Service::Checkout,
        Service::Cart,
        Service::Payment,
        Service::Shipping,
        Service::Email,
        Service::ProductCatalog,
    ];

    /// `service.name`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Frontend => "frontend",
            Service::Checkout => "checkout",
            Service::Cart => "cart",
            Service::Payment => "payment",
            Service::Shipping => "shipping",
            Service::Email => "email",
            Service::ProductCatalog => "product-catalog",
        }
    }

    fn sdk(self) -> (&'static str, &'static str, &'static str) {
        // (telemetry.sdk.language, telemetry.sdk.version, process.runtime.name)
        match self {
            Service::Frontend => ("nodejs", "1.30.1", "nodejs"),
            Service::Checkout => ("go", "1.35.0", "go"),
            Service::Cart => ("dotnet", "1.11.2", ".NET"),
            Service::Payment => ("nodejs", "1.30.1", "nodejs"),
            Service::Shipping => ("rust", "0.29.0", "rust"),
            Service::Email => ("ruby", "1.5.0", "ruby"),
            Service::ProductCatalog => ("go", "1.35.0", "go"),
        }
    }

    fn port(self) -> i64 {
        match self {
            Service::Frontend => 8080,
            Service::Checkout => 5050,
            Service::Cart => 7070,
            Service::Payment => 50051,
            Service::Shipping => 50050,
            Service::Email => 6060,
            Service::ProductCatalog => 3550,
        }
    }
}

/// One instance of a service: its resource and instrumentation scope. `id` is unique within a run (and small:
/// resources are numbered from 0).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceResource {
    pub id: u16,
    pub service: Service,
    pub resource: Resource,
    pub scope: InstrumentationScope,
    pub(crate) resource_pb: Vec<u8>,
    pub(crate) scope_pb: Vec<u8>,
}

/// One span, protobuf-encoded (an `opentelemetry.proto.trace.v1.Span` message, as prost would encode it), and
/// the service instance that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpan {
    pub resource: Arc<ServiceResource>,
    pub encoded: Vec<u8>,
}

impl ServiceSpan {
    /// The span as an owned struct.
    pub fn decode(&self) -> Span {
        Span::decode(self.encoded.as_slice()).unwrap_or_default()
    }
}

/// Which business key a span carries (drives the expected enrichment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    None,
    /// `user.id` only; `cart_items` when the span has `demo.cart.items.count`.
    Customer {
        cart_items: Option<u32>,
    },
    /// `demo.order.id` (and `user.id` or not: the order determines the customer).
    Order,
}

/// What the truth needs to know about a built span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanMeta {
    pub span_id: [u8; 8],
    pub name: &'static str,
    pub error: bool,
    pub key: KeyKind,
}

/// A built trace.
pub(crate) struct Built {
    pub spans: Vec<ServiceSpan>,
    pub meta: Vec<SpanMeta>,
    pub end: u64,
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub(crate) fn s(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.to_string()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &x in bytes {
        out.push(H[(x >> 4) as usize] as char);
        out.push(H[(x & 15) as usize] as char);
    }
    out
}

/// A random UUID (version 4 layout) as a string.
pub(crate) fn uuid(rng: &mut StdRng) -> String {
    let mut x: [u8; 16] = rng.random();
    x[6] = (x[6] & 0x0f) | 0x40;
    x[8] = (x[8] & 0x3f) | 0x80;
    let h = hex(&x);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A uniform draw in `[lo, hi]`.
pub(crate) fn between(rng: &mut StdRng, lo: u64, hi: u64) -> u64 {
    if hi <= lo { lo } else { rng.random_range(lo..=hi) }
}

/// A random non-zero span id.
pub(crate) fn span_id(rng: &mut StdRng) -> [u8; 8] {
    loop {
        let x: u64 = rng.random();
        if x != 0 {
            return x.to_be_bytes();
        }
    }
}

/// A random non-zero trace id.
pub(crate) fn trace_id(rng: &mut StdRng) -> [u8; 16] {
    loop {
        let x: u128 = rng.random();
        if x != 0 {
            return x.to_be_bytes();
        }
    }
}

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Attribute keys, pre-encoded.
struct Keys {
    user_id: Key,
    loyalty: Key,
    user_currency: Key,
    order_id: Key,
    order_amount: Key,
    order_items_count: Key,
    shipping_amount: Key,
    shipping_tracking_id: Key,
    cart_items_count: Key,
    payment_amount: Key,
    payment_card_type: Key,
    payment_card_valid: Key,
    payment_charged: Key,
    product_id: Key,
    product_name: Key,
    product_quantity: Key,
    // Semantic conventions.
    grpc_status: Key,
    peer_address: Key,
    peer_port: Key,
    http_status: Key,
    body_size: Key,
    user_agent: Key,
    client_address: Key,
    session_id: Key,
    url_path: Key,
}

impl Keys {
    fn new(prefix: AttributePrefix) -> Keys {
        let p = match prefix {
            AttributePrefix::Demo => "demo",
            AttributePrefix::App => "app",
        };
        let k = |rest: &str| Key::new(&format!("{p}.{rest}"));
        Keys {
            user_id: Key::new(match prefix {
                AttributePrefix::Demo => "user.id",
                AttributePrefix::App => "app.user.id",
            }),
            // demo 3.0.0 src/payment/charge.js and src/checkout/main.go; 2.2.0 `app.loyalty.level`, `app.user.currency`.
            loyalty: match prefix {
                AttributePrefix::Demo => Key::new("demo.user_context.loyalty_level"),
                AttributePrefix::App => Key::new("app.loyalty.level"),
            },
            user_currency: match prefix {
                AttributePrefix::Demo => Key::new("demo.user_context.selected_currency"),
                AttributePrefix::App => Key::new("app.user.currency"),
            },
            order_id: k("order.id"),
            order_amount: k("order.amount"),
            order_items_count: k("order.items.count"),
            shipping_amount: k("shipping.amount"),
            shipping_tracking_id: k("shipping.tracking.id"),
            cart_items_count: k("cart.items.count"),
            payment_amount: k("payment.amount"),
            payment_card_type: k("payment.card_type"),
            payment_card_valid: k("payment.card_valid"),
            payment_charged: k("payment.charged"),
            product_id: k("product.id"),
            product_name: k("product.name"),
            product_quantity: k("product.quantity"),
            grpc_status: Key::new("rpc.grpc.status_code"),
            peer_address: Key::new("network.peer.address"),
            peer_port: Key::new("network.peer.port"),
            http_status: Key::new("http.response.status_code"),
            body_size: Key::new("http.response.body.size"),
            user_agent: Key::new("user_agent.original"),
            client_address: Key::new("client.address"),
            session_id: Key::new("session.id"),
            url_path: Key::new("url.path"),
        }
    }
}

/// Per-session values shared by the session's frontend spans.
pub(crate) struct Session {
    pub id: String,
    pub client_address: String,
    pub user_agent: usize,
}

/// What one checkout attempt needs to build its trace.
pub(crate) struct CheckoutInput<'a> {
    pub start_ns: u64,
    pub customer: &'a Customer,
    pub session: &'a Session,
    pub order_id: &'a str,
    pub line_items: u32,
    pub value_str: &'a str,
    pub shipping_str: &'a str,
    pub card_type: &'static str,
    /// `Some((status message, timeout ns))` when the charge fails.
    pub failure: Option<(&'a str, u64)>,
    /// `Some(latency ns)` when shipping is slow.
    pub slow_ship_ns: Option<u64>,
}

/// The timing of a built checkout trace.
pub(crate) struct CheckoutTimes {
    pub place_order: (u64, u64),
    pub charge: (u64, u64),
}

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
    "Mozilla/5.0 (Macintosh) Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0) Firefox/127.0",
    "python-requests/2.32.3",
];

pub(crate) const CARD_TYPES: [&str; 3] = ["visa", "mastercard", "amex"];

/// Which name / template.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    FrontCheckout = 0,
    PlaceOrder = 1,
    GetCart = 2,
    Charge = 3,
    ShipOrder = 4,
    Email = 5,
    FrontProduct = 6,
    GetProduct = 7,
    FrontCart = 8,
    AddItem = 9,
    ChargeInternal = 10,
}

/// Builds encoded spans from precomputed templates.
pub(crate) struct SpanFactory {
    keys: Keys,
    money_double: bool,
    instances: usize,
    resources: Vec<Arc<ServiceResource>>,
    peers: Vec<Vec<String>>,
    /// Span names pre-encoded as `Span.name`.
    names: [Vec<u8>; 11],
    /// Constant attributes of each kind, pre-encoded.
    templates: [Vec<u8>; 11],
    product_paths: Vec<String>,
    currency: String,
    trace_flags: [u32; 2],
}

fn encode_attrs(attrs: &[KeyValue]) -> Vec<u8> {
    // Encoded as the attributes of an otherwise empty span, which is exactly the repeated field 9.
    Span {
        attributes: attrs.to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

impl SpanFactory {
    pub fn new(cfg: &ShopConfig, catalog: &Catalog, rng: &mut StdRng) -> SpanFactory {
        let instances = 2usize;
        let mut resources = Vec::new();
        let mut peers = Vec::new();
        for (si, svc) in Service::ALL.into_iter().enumerate() {
            let (lang, sdk_version, runtime) = svc.sdk();
            for inst in 0..instances {
                let pod = format!(
                    "{}-{}-{}",
                    svc.name(),
                    &hex(&rng.random::<[u8; 5]>())[..9],
                    &hex(&rng.random::<[u8; 3]>())[..5]
                );
                let resource = Resource {
                    attributes: vec![
                        s("service.name", svc.name()),
                        s("service.namespace", "opentelemetry-demo"),
                        s("service.version", "2.0.2"),
                        s("service.instance.id", &uuid(rng)),
                        s("deployment.environment", "production"),
                        s("host.name", &pod),
                        s("host.arch", "amd64"),
                        s("os.type", "linux"),
                        s("process.runtime.name", runtime),
                        s("telemetry.sdk.name", "opentelemetry"),
                        s("telemetry.sdk.language", lang),
                        s("telemetry.sdk.version", sdk_version),
                        s("k8s.namespace.name", "otel-demo"),
                        s("k8s.pod.name", &pod),
                    ],
                    ..Default::default()
                };
                let scope = InstrumentationScope {
                    name: format!("oteldemo.{}", svc.name()),
                    version: "2.0.2".into(),
                    ..Default::default()
                };
                resources.push(Arc::new(ServiceResource {
                    id: (si * instances + inst) as u16,
                    service: svc,
                    resource_pb: resource.encode_to_vec(),
                    scope_pb: scope.encode_to_vec(),
                    resource,
                    scope,
                }));
            }
            peers.push(
                (0..16)
                    .map(|_| format!("10.42.{}.{}", rng.random_range(0..16u8), rng.random_range(2..254u8)))
                    .collect(),
            );
        }
        let rpc = |svc: Service, rpc_service: &str, method: &str| {
            encode_attrs(&[
                s("rpc.system", "grpc"),
                s("rpc.service", rpc_service),
                s("rpc.method", method),
                s("server.address", svc.name()),
                kv("server.port", any_value::Value::IntValue(svc.port())),
                s("network.transport", "tcp"),
                s("network.type", "ipv4"),
                s("network.protocol.version", "2"),
            ])
        };
        let http = |method: &str, route: &str, path: Option<&str>| {
            let mut v = vec![
                s("http.request.method", method),
                s("http.route", route),
                s("url.scheme", "http"),
                s("server.address", "frontend-proxy"),
                kv("server.port", any_value::Value::IntValue(8080)),
                s("network.protocol.version", "1.1"),
            ];
            if let Some(p) = path {
                v.push(s("url.path", p));
            }
            encode_attrs(&v)
        };
        let templates = [
            http("POST", "/api/checkout", Some("/api/checkout")),
            rpc(Service::Checkout, "oteldemo.CheckoutService", "PlaceOrder"),
            rpc(Service::Cart, "oteldemo.CartService", "GetCart"),
            rpc(Service::Payment, "oteldemo.PaymentService", "Charge"),
            rpc(Service::Shipping, "oteldemo.ShippingService", "ShipOrder"),
            rpc(Service::Email, "oteldemo.EmailService", "SendOrderConfirmation"),
            http("GET", "/api/products/[productId]", None),
            rpc(Service::ProductCatalog, "oteldemo.ProductCatalogService", "GetProduct"),
            http("POST", "/api/cart", Some("/api/cart")),
            rpc(Service::Cart, "oteldemo.CartService", "AddItem"),
            // `charge`: an internal span of the payment service, no RPC attributes.
            Vec::new(),
        ];
        SpanFactory {
            keys: Keys::new(cfg.attribute_prefix),
            money_double: cfg.money_attributes == MoneyAttributes::Double,
            instances,
            resources,
            peers,
            names: ALL_NAMES.map(|n| {
                let mut v = Vec::new();
                pb::bytes_field(&mut v, 0x2a, n.as_bytes());
                v
            }),
            templates,
            product_paths: catalog
                .products
                .iter()
                .map(|p| format!("/api/products/{}", p.sku))
                .collect(),
            currency: cfg.currency.as_str().to_string(),
            // W3C sampled; the root's parent is not remote, every other span's parent is (server spans).
            trace_flags: [0x101, 0x301],
        }
    }

    /// Every service instance's resource, indexed by [`ServiceResource::id`].
    pub fn resources(&self) -> &[Arc<ServiceResource>] {
        &self.resources
    }

    fn resource(&self, svc: Service, rng: &mut StdRng) -> Arc<ServiceResource> {
        let idx = svc as usize * self.instances + rng.random_range(0..self.instances);
        self.resources[idx].clone()
    }

    /// Starts a span: head and constant attributes.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        kind: Kind,
        trace_id: &[u8; 16],
        span_id: &[u8; 8],
        parent: Option<&[u8; 8]>,
        start: u64,
        end: u64,
    ) -> Vec<u8> {
        let mut buf = Vec::with_capacity(768);
        let k = kind as usize;
        pb::span_head(
            &mut buf,
            trace_id,
            span_id,
            parent,
            &self.names[k],
            if kind == Kind::ChargeInternal { 1 } else { 2 }, // INTERNAL, SERVER
            start,
            end,
        );
        buf.extend_from_slice(&self.templates[k]);
        buf
    }

    fn rpc_common(&self, buf: &mut Vec<u8>, svc: Service, status: i64, rng: &mut StdRng) {
        let k = &self.keys;
        attr_int(buf, &k.grpc_status, status);
        let p = &self.peers[svc as usize];
        attr_str(buf, &k.peer_address, &p[rng.random_range(0..p.len())]);
        attr_int(buf, &k.peer_port, rng.random_range(32768..61000));
    }

    fn http_common(&self, buf: &mut Vec<u8>, status: i64, session: &Session, customer: &Customer, rng: &mut StdRng) {
        let k = &self.keys;
        attr_int(buf, &k.http_status, status);
        attr_int(buf, &k.body_size, rng.random_range(80..4000));
        attr_str(buf, &k.user_agent, USER_AGENTS[session.user_agent % USER_AGENTS.len()]);
        attr_str(buf, &k.client_address, &session.client_address);
        attr_int(buf, &k.peer_port, rng.random_range(32768..61000));
        attr_str(buf, &k.session_id, &session.id);
        attr_str(buf, &k.user_id, &customer.id);
    }

    /// A money attribute from its exact decimal string.
    fn money(&self, buf: &mut Vec<u8>, key: &Key, amount: &str) {
        if self.money_double {
            // The nearest double to the exact decimal: its shortest representation is the decimal again.
            attr_double(buf, key, amount.parse::<f64>().unwrap_or_default());
        } else {
            attr_str(buf, key, amount);
        }
    }

    /// Finishes a span (flags) and adds it.
    fn push(
        &self,
        out: &mut Built,
        svc: Service,
        mut encoded: Vec<u8>,
        meta: (&[u8; 8], Kind, bool, KeyKind),
        rng: &mut StdRng,
    ) {
        // The parent is local for the roots (none) and the internal `charge` (its server span).
        let local = matches!(
            meta.1,
            Kind::FrontCheckout | Kind::FrontProduct | Kind::FrontCart | Kind::ChargeInternal
        );
        pb::span_flags(&mut encoded, self.trace_flags[usize::from(!local)]);
        out.spans.push(ServiceSpan {
            resource: self.resource(svc, rng),
            encoded,
        });
        out.meta.push(SpanMeta {
            span_id: *meta.0,
            name: ALL_NAMES[meta.1 as usize],
            error: meta.2,
            key: meta.3,
        });
    }

    /// A checkout attempt.
    pub fn checkout(&self, trace_id: [u8; 16], inp: &CheckoutInput<'_>, rng: &mut StdRng) -> (Built, CheckoutTimes) {
        let k = &self.keys;
        let tid = &trace_id;
        let ids: [[u8; 8]; 7] = std::array::from_fn(|_| span_id(rng));
        let failed = inp.failure.is_some();
        let t0 = inp.start_ns;
        let po_start = t0 + between(rng, 300 * US, 2 * MS);
        let cart_start = po_start + between(rng, 200 * US, MS);
        let cart_end = cart_start + between(rng, MS, 6 * MS);
        let charge_start = cart_end + between(rng, 2 * MS, 10 * MS);
        let charge_end = charge_start
            + match inp.failure {
                Some((_, timeout)) => timeout + between(rng, 0, 50 * MS),
                None => between(rng, 20 * MS, 120 * MS),
            };
        let (ship, mail, po_end) = if failed {
            ((0, 0), (0, 0), charge_end + between(rng, 200 * US, MS))
        } else {
            let ship_start = charge_end + between(rng, 200 * US, MS);
            let ship_end = ship_start
                + match inp.slow_ship_ns {
                    Some(l) => between(rng, l * 8 / 10, l * 13 / 10),
                    None => between(rng, 5 * MS, 40 * MS),
                };
            let mail_start = ship_end + between(rng, 200 * US, MS);
            let mail_end = mail_start + between(rng, 3 * MS, 25 * MS);
            (
                (ship_start, ship_end),
                (mail_start, mail_end),
                mail_end + between(rng, 500 * US, 2 * MS),
            )
        };
        let root_end = po_end + between(rng, 500 * US, 3 * MS);
        let tier = inp.customer.tier.as_str();
        let items = i64::from(inp.line_items);
        let tracking = (!failed).then(|| uuid(rng));
        let mut out = Built {
            spans: Vec::with_capacity(6),
            meta: Vec::with_capacity(6),
            end: root_end,
        };

        // Frontend.
        let mut b = self.begin(Kind::FrontCheckout, tid, &ids[0], None, t0, root_end);
        self.http_common(&mut b, if failed { 500 } else { 200 }, inp.session, inp.customer, rng);
        if failed {
            pb::status_error(&mut b, "Internal Server Error");
        }
        let key = KeyKind::Customer { cart_items: None };
        self.push(
            &mut out,
            Service::Frontend,
            b,
            (&ids[0], Kind::FrontCheckout, failed, key),
            rng,
        );

        // PlaceOrder.
        let mut b = self.begin(Kind::PlaceOrder, tid, &ids[1], Some(&ids[0]), po_start, po_end);
        self.rpc_common(&mut b, Service::Checkout, if failed { 13 } else { 0 }, rng);
        attr_str(&mut b, &k.user_id, &inp.customer.id);
        attr_str(&mut b, &k.user_currency, &self.currency);
        attr_str(&mut b, &k.order_id, inp.order_id);
        attr_int(&mut b, &k.order_items_count, items);
        if let Some(track) = &tracking {
            self.money(&mut b, &k.order_amount, inp.value_str);
            self.money(&mut b, &k.shipping_amount, inp.shipping_str);
            attr_str(&mut b, &k.shipping_tracking_id, track);
        }
        if let Some((m, _)) = inp.failure {
            pb::status_error(&mut b, &format!("failed to charge card: {m}"));
        }
        self.push(
            &mut out,
            Service::Checkout,
            b,
            (&ids[1], Kind::PlaceOrder, failed, KeyKind::Order),
            rng,
        );

        // GetCart.
        let mut b = self.begin(Kind::GetCart, tid, &ids[2], Some(&ids[1]), cart_start, cart_end);
        self.rpc_common(&mut b, Service::Cart, 0, rng);
        attr_str(&mut b, &k.user_id, &inp.customer.id);
        attr_int(&mut b, &k.cart_items_count, items);
        let key = KeyKind::Customer {
            cart_items: Some(inp.line_items),
        };
        self.push(&mut out, Service::Cart, b, (&ids[2], Kind::GetCart, false, key), rng);

        // Charge.
        let mut b = self.begin(Kind::Charge, tid, &ids[3], Some(&ids[1]), charge_start, charge_end);
        self.rpc_common(&mut b, Service::Payment, if failed { 2 } else { 0 }, rng);
        attr_str(&mut b, &k.user_id, &inp.customer.id);
        attr_str(&mut b, &k.order_id, inp.order_id);
        attr_str(&mut b, &k.payment_amount, inp.value_str);
        if let Some((m, _)) = inp.failure {
            pb::status_error(&mut b, m);
        }
        self.push(
            &mut out,
            Service::Payment,
            b,
            (&ids[3], Kind::Charge, failed, KeyKind::Order),
            rng,
        );
        // charge (internal): the card, the tier; on a failure, the error (charge.js records it, then the server span).
        let ci_start = charge_start + between(rng, 100 * US, 500 * US);
        let ci_end = (charge_end - between(rng, 50 * US, 300 * US)).max(ci_start + US);
        let mut b = self.begin(Kind::ChargeInternal, tid, &ids[6], Some(&ids[3]), ci_start, ci_end);
        attr_str(&mut b, &k.order_id, inp.order_id);
        attr_str(&mut b, &k.payment_card_type, inp.card_type);
        attr_bool(&mut b, &k.payment_card_valid, true);
        attr_str(&mut b, &k.loyalty, tier);
        if let Some((m, _)) = inp.failure {
            pb::status_error(&mut b, m);
        } else {
            attr_bool(&mut b, &k.payment_charged, true);
        }
        self.push(
            &mut out,
            Service::Payment,
            b,
            (&ids[6], Kind::ChargeInternal, failed, KeyKind::Order),
            rng,
        );

        if let Some(track) = &tracking {
            let mut b = self.begin(Kind::ShipOrder, tid, &ids[4], Some(&ids[1]), ship.0, ship.1);
            self.rpc_common(&mut b, Service::Shipping, 0, rng);
            attr_str(&mut b, &k.order_id, inp.order_id);
            self.money(&mut b, &k.shipping_amount, inp.shipping_str);
            attr_str(&mut b, &k.shipping_tracking_id, track);
            self.push(
                &mut out,
                Service::Shipping,
                b,
                (&ids[4], Kind::ShipOrder, false, KeyKind::Order),
                rng,
            );

            let mut b = self.begin(Kind::Email, tid, &ids[5], Some(&ids[1]), mail.0, mail.1);
            self.rpc_common(&mut b, Service::Email, 0, rng);
            attr_str(&mut b, &k.order_id, inp.order_id);
            attr_int(&mut b, &k.order_items_count, items);
            self.push(
                &mut out,
                Service::Email,
                b,
                (&ids[5], Kind::Email, false, KeyKind::Order),
                rng,
            );
        }
        (
            out,
            CheckoutTimes {
                place_order: (po_start, po_end),
                charge: (charge_start, charge_end),
            },
        )
    }

    /// A product page view: frontend → product-catalog.
    #[allow(clippy::too_many_arguments)]
    pub fn browse(
        &self,
        trace_id: [u8; 16],
        start: u64,
        customer: &Customer,
        session: &Session,
        product: usize,
        catalog: &Catalog,
        rng: &mut StdRng,
    ) -> Built {
        let k = &self.keys;
        let (root, child) = (span_id(rng), span_id(rng));
        let c_start = start + between(rng, 300 * US, 2 * MS);
        let c_end = c_start + between(rng, 500 * US, 8 * MS);
        let end = c_end + between(rng, 2 * MS, 30 * MS);
        let p = &catalog.products[product];
        let mut out = Built {
            spans: Vec::with_capacity(2),
            meta: Vec::with_capacity(2),
            end,
        };
        let mut b = self.begin(Kind::FrontProduct, &trace_id, &root, None, start, end);
        self.http_common(&mut b, 200, session, customer, rng);
        attr_str(&mut b, &k.url_path, &self.product_paths[product]);
        attr_str(&mut b, &k.product_id, &p.sku);
        let key = KeyKind::Customer { cart_items: None };
        self.push(
            &mut out,
            Service::Frontend,
            b,
            (&root, Kind::FrontProduct, false, key),
            rng,
        );
        let mut b = self.begin(Kind::GetProduct, &trace_id, &child, Some(&root), c_start, c_end);
        self.rpc_common(&mut b, Service::ProductCatalog, 0, rng);
        attr_str(&mut b, &k.product_id, &p.sku);
        attr_str(&mut b, &k.product_name, &p.name);
        self.push(
            &mut out,
            Service::ProductCatalog,
            b,
            (&child, Kind::GetProduct, false, KeyKind::None),
            rng,
        );
        out
    }

    /// Adding a line item to the cart: frontend → cart.
    #[allow(clippy::too_many_arguments)]
    pub fn add_item(
        &self,
        trace_id: [u8; 16],
        start: u64,
        customer: &Customer,
        session: &Session,
        sku: &str,
        quantity: u32,
        rng: &mut StdRng,
    ) -> Built {
        let k = &self.keys;
        let (root, child) = (span_id(rng), span_id(rng));
        let c_start = start + between(rng, 300 * US, 2 * MS);
        let c_end = c_start + between(rng, MS, 6 * MS);
        let end = c_end + between(rng, MS, 5 * MS);
        let mut out = Built {
            spans: Vec::with_capacity(2),
            meta: Vec::with_capacity(2),
            end,
        };
        let mut b = self.begin(Kind::FrontCart, &trace_id, &root, None, start, end);
        self.http_common(&mut b, 200, session, customer, rng);
        attr_str(&mut b, &k.product_id, sku);
        attr_int(&mut b, &k.product_quantity, i64::from(quantity));
        let key = KeyKind::Customer { cart_items: None };
        self.push(
            &mut out,
            Service::Frontend,
            b,
            (&root, Kind::FrontCart, false, key),
            rng,
        );
        let mut b = self.begin(Kind::AddItem, &trace_id, &child, Some(&root), c_start, c_end);
        self.rpc_common(&mut b, Service::Cart, 0, rng);
        attr_str(&mut b, &k.user_id, &customer.id);
        attr_str(&mut b, &k.product_id, sku);
        attr_int(&mut b, &k.product_quantity, i64::from(quantity));
        self.push(&mut out, Service::Cart, b, (&child, Kind::AddItem, false, key), rng);
        out
    }
}
