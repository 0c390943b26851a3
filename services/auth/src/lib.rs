//! llmgw's `auth` service: "who are you, and may you?"
//!
//! Orgs, projects and API keys in one store (a SQLite file under `data_dir`,
//! or the `auth` schema of the configured PostgreSQL database; the same
//! portable SQL on both). A key is 256 random bits,
//! shown once, and stored only as a keyed hash; [`service`] answers
//! `Authenticate` by hashing what the caller presents and looking the hash up
//! with one indexed query. The edge caches answers; this crate does not.
//!
//! ```no_run
//! # async fn demo(config: &llmgw_kit::config::Config) -> Result<(), llmgw_kit::GwError> {
//! let store = llmgw_auth::open(config).await?;
//! let created = store.create_key("acme", Some("search")).await?;
//! let auth = llmgw_auth::service(store);
//! # Ok(()) }
//! ```

mod admin;
mod budgets;
mod credentials;
mod keys;
mod service;
mod store;

pub use credentials::Rotated;
pub use service::service;
pub use store::{AuthStore, CreatedKey, DEFAULT_ORG, open};

#[cfg(test)]
mod credentials_tests;
#[cfg(test)]
mod governance_tests;
#[cfg(test)]
mod tests;
