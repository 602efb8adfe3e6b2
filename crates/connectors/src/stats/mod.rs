//! Generic statistics shared by the connectors.
pub mod rate;
