//! Statistics shared by the connectors' detectors: sequential tests, baselines learned online, exact tail
//! probabilities. Generic (no spans, no config): each file documents its model and is unit-tested.
//! The design and the numbers behind the defaults are in `docs/incident-detection.md` (incidents) and
//! `docs/kpi-prediction.md` (the order KPI's stage flow).

pub mod baseline;
pub mod binomial;
pub mod calibration;
pub mod cusum;
pub mod rate;
