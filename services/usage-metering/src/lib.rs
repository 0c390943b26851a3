//! llmgw's `usage-metering` service: "what did it cost, and who spent it?"
//!
//! Usage events land in one table (a SQLite file under `data_dir` today; the
//! same portable SQL runs on PostgreSQL), idempotent by request id so the
//! edge can resend a batch it is unsure about. The cost of each event is
//! computed here from the price the router chose, and `GetUsage` sums one
//! org's events.

mod store;

pub use store::{UsageStore, open, service};

#[cfg(test)]
mod tests;
