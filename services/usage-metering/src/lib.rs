//! llmgw's `usage-metering` service: "what did it cost, and who spent it?"
//!
//! Usage events land in one table (a SQLite file under `data_dir`, or the
//! `metering` schema of the configured PostgreSQL database; the same portable
//! SQL on both), idempotent by request id so the edge can resend a batch it
//! is unsure about. The cost of each event is computed here from the price
//! the router chose, and `GetUsage` sums one org's events. Each batch also
//! adds its new events to daily roll-ups per (day, org, project, key, model)
//! in the same transaction ([`rollup`]); `QueryUsage` reads those
//! ([`query`]). The request log expires after `metering.retention`
//! ([`retention`]); the roll-ups are kept.

mod query;
mod retention;
mod rollup;
mod store;

pub use retention::spawn_retention;
pub use store::{UsageStore, open, service};

#[cfg(test)]
mod byok_tests;
#[cfg(test)]
mod cache_hit_tests;
#[cfg(test)]
mod tests;
