//! What every llmgw service shares: configuration loading, the error type and
//! its codes, the service traits with their local-or-remote clients, the gRPC
//! server and channel builders, storage pools, telemetry and shutdown.
//!
//! Small and boring on purpose: service crates hold the logic.

pub mod admin;
pub mod config;
pub mod db;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod openai;
pub mod pricing;
pub mod secret;
pub mod services;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upstream;

pub use error::{ErrorCode, GwError};
