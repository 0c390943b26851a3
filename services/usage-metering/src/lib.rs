//! llmgw's `usage-metering` service: "what did it cost, and who spent it?"
//!
//! Usage events land in one table (a SQLite file under `data_dir`, or the
//! `metering` schema of the configured PostgreSQL database; the same portable
//! SQL on both), idempotent by request id so the edge can resend a batch it
//! is unsure about. The cost of each event is computed here from the price
//! the router chose, and `GetUsage` sums one org's events.

mod store;

pub use store::{UsageStore, open, service};

#[cfg(test)]
mod byok_tests;
#[cfg(test)]
mod tests;
