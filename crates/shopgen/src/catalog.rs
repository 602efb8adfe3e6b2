//! Customers and products: the shop's reference data, derived from the seed alone.

use bizpilot_core::money::{Currency, Money};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Serialize, Serializer};
use std::fmt::Write as _;

use crate::config::ShopConfig;

/// Loyalty tier (`demo.user_context.loyalty_level`, on the payment service's `charge` span).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Platinum,
    Gold,
    Silver,
    Bronze,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Platinum, Tier::Gold, Tier::Silver, Tier::Bronze];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Platinum => "platinum",
            Tier::Gold => "gold",
            Tier::Silver => "silver",
            Tier::Bronze => "bronze",
        }
    }
}

/// A customer. `id` is `cust-000042` (six digits, more when there are more customers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Customer {
    pub id: String,
    pub tier: Tier,
    pub region: &'static str,
    pub email: String,
}

/// A product. `sku` is `SKU-0001`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    #[serde(serialize_with = "ser_amount")]
    pub unit_price: Money,
}

/// Serializes money as its exact decimal amount string (`"123.45"`); the currency is given elsewhere.
pub(crate) fn ser_amount<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.amount_string())
}

pub(crate) fn ser_opt_amount<S: Serializer>(m: &Option<Money>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(&m.amount_string()),
        None => s.serialize_none(),
    }
}

/// All customers and products of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub currency: Currency,
    pub customers: Vec<Customer>,
    pub products: Vec<Product>,
}

const REGIONS: [(&str, u32); 5] = [
    ("us-east", 35),
    ("us-west", 20),
    ("eu-west", 25),
    ("eu-central", 10),
    ("ap-southeast", 10),
];

const ADJECTIVES: [&str; 12] = [
    "Lunar",
    "Solar",
    "Stellar",
    "Cosmic",
    "Orion",
    "Nebula",
    "Galactic",
    "Polar",
    "Celestial",
    "Apollo",
    "Comet",
    "Zenith",
];

const NOUNS: [&str; 12] = [
    "Telescope",
    "Binoculars",
    "Star Chart",
    "Eyepiece",
    "Red Flashlight",
    "Solar Filter",
    "Tripod",
    "Lens Cleaning Kit",
    "Barlow Lens",
    "Equatorial Mount",
    "Finder Scope",
    "Camera Adapter",
];

impl Catalog {
    /// The catalog of `cfg` (depends on `seed`, `customers`, `products` and `currency` only).
    pub fn new(cfg: &ShopConfig) -> Catalog {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_ca7a_1090_0001);
        let width = (cfg.customers.max(1).ilog10() as usize + 1).max(6);
        let customers = (1..=cfg.customers)
            .map(|i| {
                let id = format!("cust-{i:0width$}");
                // Skewed tiers: 3 % platinum, 12 % gold, 30 % silver, 55 % bronze.
                let tier = match rng.random_range(0..100u32) {
                    0..3 => Tier::Platinum,
                    3..15 => Tier::Gold,
                    15..45 => Tier::Silver,
                    _ => Tier::Bronze,
                };
                let mut r = rng.random_range(0..100u32);
                let mut region = REGIONS[0].0;
                for (name, w) in REGIONS {
                    if r < w {
                        region = name;
                        break;
                    }
                    r -= w;
                }
                let email = format!("{id}@example.com");
                Customer {
                    id,
                    tier,
                    region,
                    email,
                }
            })
            .collect();
        let products = (1..=cfg.products)
            .map(|i| {
                let k = (i - 1) as usize;
                let base = format!("{} {}", ADJECTIVES[k % 12], NOUNS[(k / 12) % 12]);
                let name = if k < 144 {
                    base
                } else {
                    format!("{base} Mk {}", k / 144 + 1)
                };
                // Whole dollars by bucket, then typical price endings.
                let dollars: i64 = match rng.random_range(0..100u32) {
                    0..40 => rng.random_range(5..50),
                    40..75 => rng.random_range(50..200),
                    75..95 => rng.random_range(200..1000),
                    _ => rng.random_range(1000..3000),
                };
                let cents: i64 = match rng.random_range(0..10u32) {
                    0..5 => 99,
                    5..7 => 0,
                    7 => 49,
                    _ => rng.random_range(0..100),
                };
                Product {
                    sku: format!("SKU-{i:04}"),
                    name,
                    unit_price: Money::from_minor(dollars * 100 + cents, cfg.currency),
                }
            })
            .collect();
        Catalog {
            currency: cfg.currency,
            customers,
            products,
        }
    }

    /// The customer with id `id` (`cust-000042`).
    pub fn customer(&self, id: &str) -> Option<&Customer> {
        let n: usize = id.strip_prefix("cust-")?.parse().ok()?;
        self.customers.get(n.checked_sub(1)?).filter(|c| c.id == id)
    }

    /// The product with sku `sku` (`SKU-0001`).
    pub fn product(&self, sku: &str) -> Option<&Product> {
        let n: usize = sku.strip_prefix("SKU-")?.parse().ok()?;
        self.products.get(n.checked_sub(1)?).filter(|p| p.sku == sku)
    }

    /// Reference data as CSV: `customer_id,tier,region,email` with a header line.
    pub fn customers_csv(&self) -> String {
        let mut s = String::with_capacity(self.customers.len() * 48 + 32);
        s.push_str("customer_id,tier,region,email\n");
        for c in &self.customers {
            let _ = writeln!(s, "{},{},{},{}", c.id, c.tier.as_str(), c.region, c.email);
        }
        s
    }

    /// Reference data as CSV: `sku,name,unit_price,currency` with a header line.
    pub fn products_csv(&self) -> String {
        let mut s = String::with_capacity(self.products.len() * 48 + 32);
        s.push_str("sku,name,unit_price,currency\n");
        for p in &self.products {
            let _ = writeln!(
                s,
                "{},{},{},{}",
                p.sku,
                p.name,
                p.unit_price.amount_string(),
                self.currency
            );
        }
        s
    }
}
